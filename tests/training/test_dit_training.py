"""The DiT trainer for real, small: the tiny DiTs learn synthetic moving-shape latents.

Latents are made directly in latent space (no VAE): a square blob whose 16-channel colour
and direction of motion are set by the sample's "caption"; the text features encode the
same colour and direction, so the model can learn the video from the text. Each run is a
few hundred steps of the tiny golden-config DiT on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pyramid_core.models as models
from golden_utils import GOLDEN_DIR, load_config, load_weights
from pyramid_core.loading import save_checkpoint
from pyramid_core.training.config import ConfigError, config_from_dict
from pyramid_core.training.dit_trainer import DiTTrainConfig, train_dit
from pyramid_core.training.logs import read_metrics
from pyramid_core.training.lora import load_lora_into_dit

LATENT = (16, 3, 8, 8)  # C, T, h, w
COLOURS, DIRECTIONS = 4, 4
MOVES = [(0, 1), (1, 0), (0, -1), (-1, 0)]


def moving_square(colour: torch.Tensor, move: tuple[int, int], start: tuple[int, int]) -> torch.Tensor:
    """A 3x3 square of ``colour`` moving by ``move`` latent pixels per frame over a dim background."""
    c, t, h, w = LATENT
    video = torch.full((c, t, h, w), -0.5)
    for frame in range(t):
        y, x = (start[0] + move[0] * frame) % (h - 2), (start[1] + move[1] * frame) % (w - 2)
        video[:, frame, y:y + 3, x:x + 3] = colour.view(c, 1, 1)
    return video


def text_features(colour: int, direction: int, text_len: int, dim: int, pooled_dim: int) -> dict:
    embed = torch.zeros(1, text_len, dim)
    embed[0, 0, colour] = 1.0
    embed[0, 1, COLOURS + direction] = 1.0
    pooled = torch.zeros(1, pooled_dim)
    pooled[0, colour] = pooled[0, COLOURS + direction] = 1.0
    mask = torch.zeros(1, text_len, dtype=torch.int64)
    mask[0, :2] = 1
    return {"prompt_embed": embed, "prompt_attention_mask": mask, "pooled_prompt_embed": pooled}


def write_latent_dataset(root: Path, model_config: dict, num_samples: int = 32, seed: int = 0) -> Path:
    """``root/anno.jsonl`` with ``latent``/``text_fea`` rows of moving squares (already normalised)."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.randn(COLOURS, LATENT[0], generator=g).clamp(-2, 2)
    rows = []
    for i in range(num_samples):
        colour, direction = i % COLOURS, (i // COLOURS) % DIRECTIONS
        start = tuple(torch.randint(0, LATENT[2] - 2, (2,), generator=g).tolist())
        torch.save(moving_square(palette[colour], MOVES[direction], start).unsqueeze(0), root / f"lat{i}.pt")
        torch.save(text_features(colour, direction, 4, model_config["joint_attention_dim"],
                                 model_config["pooled_projection_dim"]), root / f"txt{i}.pt")
        rows.append({"latent": f"lat{i}.pt", "text_fea": f"txt{i}.pt", "text": f"shape {colour} moving {direction}"})
    (root / "anno.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "anno.jsonl"


def tiny_config(tmp_path: Path, family: str, **overrides) -> DiTTrainConfig:
    model_config = load_config(f"config_{family}_tiny.json")
    anno = write_latent_dataset(tmp_path, model_config)
    values = dict(anno_files=[str(anno)], data_root=str(tmp_path),
                  dit_config=str(GOLDEN_DIR / f"config_{family}_tiny.json"),
                  variant="miniflux-384p" if family == "flux" else "sd3-768p", latents_normalized=True,
                  max_latent_frames=LATENT[1], batch_size=4, lr=2e-3, weight_decay=0.0, grad_clip=1.0,
                  max_steps=300, log_every=1, save_every=1000, output_dir=str(tmp_path / "run"), device="cpu",
                  tensorboard=False, seed=3)
    values.update(overrides)
    return config_from_dict(DiTTrainConfig, values)


def loss_curve(run_dir: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(run_dir / "metrics.csv")]


def window_means(losses: list[float], width: int = 30) -> tuple[float, float]:
    return sum(losses[:width]) / width, sum(losses[-width:]) / width


@pytest.mark.parametrize("family,temporal_pyramid", [("flux", True), ("flux", False), ("mmdit", True)])
def test_tiny_dit_learns_moving_shapes(tmp_path, family, temporal_pyramid):
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, family, temporal_pyramid=temporal_pyramid)
    result = train_dit(cfg)
    losses = loss_curve(Path(cfg.output_dir))
    start, end = window_means(losses)
    print(f"{family} temporal_pyramid={temporal_pyramid}: loss {start:.3f} -> {end:.3f}")
    assert result["step"] == cfg.max_steps and len(losses) == cfg.max_steps
    assert end < 0.75 * start, (start, end)
    assert (Path(cfg.output_dir) / "diffusion_transformer" / "config.json").is_file()


def test_resume_continues_the_same_run(tmp_path):
    """A run stopped after a checkpoint and resumed logs the same losses as an unbroken run."""
    torch.set_num_threads(1)
    whole = tiny_config(tmp_path, "flux", max_steps=6, save_every=3, output_dir=str(tmp_path / "whole"))
    train_dit(whole)
    first = tiny_config(tmp_path, "flux", max_steps=3, save_every=3, output_dir=str(tmp_path / "split"))
    train_dit(first)
    resumed = tiny_config(tmp_path, "flux", max_steps=6, save_every=3, output_dir=str(tmp_path / "split"))
    train_dit(resumed)
    assert loss_curve(tmp_path / "split") == pytest.approx(loss_curve(tmp_path / "whole"), rel=1e-6, abs=1e-7)


def test_impossible_configs_fail_before_training(tmp_path):
    base = dict(dit_config=str(GOLDEN_DIR / "config_flux_tiny.json"), output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="multiple of sum\\(sample_ratios\\)"):
        config_from_dict(DiTTrainConfig, {**base, "batch_size": 6})
    with pytest.raises(ConfigError, match="sample_ratios"):
        config_from_dict(DiTTrainConfig, {**base, "sample_ratios": [1, 0, 1]})
    with pytest.raises(ConfigError, match="one ratio per stage"):
        config_from_dict(DiTTrainConfig, {**base, "sample_ratios": [2, 2], "batch_size": 4})
    with pytest.raises(ConfigError, match="video_sync_group"):
        config_from_dict(DiTTrainConfig, {**base, "video_sync_group": 3})
    with pytest.raises(ConfigError, match="init_weights"):
        config_from_dict(DiTTrainConfig, {**base, "lora_rank": 4})
    with pytest.raises(ConfigError, match="exactly one of"):
        config_from_dict(DiTTrainConfig, {"output_dir": str(tmp_path)})


def test_latents_the_pyramid_cannot_halve_fail_before_training(tmp_path):
    cfg = tiny_config(tmp_path, "flux", max_steps=2)
    bad = torch.zeros(1, 16, 3, 12, 12)  # 12 is not a multiple of 8
    torch.save(bad, tmp_path / "lat0.pt")
    for i in range(1, 32):  # every row of that size, so the bucket check sees it
        torch.save(bad, tmp_path / f"lat{i}.pt")
    with pytest.raises(ValueError, match="multiple of 8"):
        train_dit(cfg)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_lora_run_from_a_pretrained_file_exports_a_loadable_lora(tmp_path, precision):
    """LoRA through train_dit, with gradient checkpointing and EMA."""
    torch.set_num_threads(1)
    model = models.PyramidFluxTransformer.from_config(load_config("config_flux_tiny.json"))
    model.load_state_dict(load_weights("weights_flux_tiny.safetensors"))
    init = save_checkpoint(model, tmp_path / "init.safetensors")
    cfg = tiny_config(tmp_path, "flux", dit_config="", init_weights=str(init), lora_rank=4, max_steps=4,
                      ema_decay=0.9, mixed_precision=precision, gradient_checkpointing=True)
    result = train_dit(cfg)
    assert Path(result["export"]).name == "lora.safetensors"
    load_lora_into_dit(model, result["export"])


def test_an_exported_dit_loads_and_samples_a_video(tmp_path):
    """train-dit's export is an official diffusion_transformer/ folder: the loaders take it,
    the sampler runs it, and the result decodes and writes as an mp4."""
    import av

    from pyramid_core.latents import decode_from_latents
    from pyramid_core.loading import load_dit
    from pyramid_core.models import CausalVideoVAE
    from pyramid_core.models.text_encoders import PromptEmbeddings
    from pyramid_core.sampling import TextConditioning, text_to_video
    from pyramid_core.video_io import frames_to_uint8, write_video

    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, "flux", max_steps=4)
    result = train_dit(cfg)
    dit = load_dit(result["export"], dtype="fp32")
    model_config = load_config("config_flux_tiny.json")
    features = text_features(1, 2, 4, model_config["joint_attention_dim"], model_config["pooled_projection_dim"])
    prompt = PromptEmbeddings(features["prompt_embed"], features["prompt_attention_mask"],
                              features["pooled_prompt_embed"])
    latents = text_to_video(dit, TextConditioning(prompt, prompt), width=64, height=64, num_frames=9,
                            variant=cfg.variant, steps=1, video_steps=1, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (1, 16, 2, 8, 8) and torch.isfinite(latents).all()
    vae = CausalVideoVAE.from_config(load_config("config_vae_tiny.json"))
    vae.load_state_dict(load_weights("weights_vae_tiny.safetensors"))
    frames = frames_to_uint8(decode_from_latents(vae.eval(), latents, cfg.variant))[0]
    path = write_video(tmp_path / "sample.mp4", frames)
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == 9 and (decoded[0].width, decoded[0].height) == (64, 64)
