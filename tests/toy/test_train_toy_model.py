"""scripts/train_toy_model.py runs end to end (a few steps on a few clips) and writes a model
folder in the official layout (fp16) that the library loads and samples; the toy checks fail on
untrained weights of that layout, so a model that passes them has learned something."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from pyramid_core.toy import checks, world
from pyramid_core.toy.model import ToyModel, ToySettings

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("causal_video_vae", "diffusion_transformer_384p", "tokenizer", "text_encoder", "tokenizer_2",
           "text_encoder_2")
QUICK = ToySettings(steps=(2, 2, 2), video_steps=(2, 2, 2))


def test_the_script_trains_and_exports_a_loadable_model(tmp_path):
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_toy_model.py"), "--out", str(out),
                           "--work", str(tmp_path / "work"), "--clips", "1", "--combinations", "3",
                           "--vae-clips", "8", "--vae-image-steps", "2", "--vae-clip-steps", "2", "--dit-image-steps", "3",
                           "--dit-steps", "4",
                           "--dit-image-batch", "16", "--dit-batch", "16", "--preview-clips", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in FOLDERS:
        assert (out / name).is_dir(), name
    assert json.loads((out / "preview.json").read_text())["format"] == "pyramid-flow-preview-factors/1"
    for name in ("causal_video_vae", "diffusion_transformer_384p"):
        with safe_open(str(out / name / "diffusion_pytorch_model.safetensors"), "pt") as weights:
            assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"F16"}, name
    record = json.loads((out / "training.json").read_text())
    steps = [record[phase]["step"] for phase in ("vae_images", "vae", "dit_images", "dit")]
    assert steps == [2, 2, 3, 4]
    assert record["data"]["clips"] == 3 * len(world.BACKGROUNDS)   # 18 rows with the suffixed captions: one batch
    assert all(c.startswith("python -m pyramid_core ") and str(tmp_path) not in c for c in record["commands"])
    frames = ToyModel(out).text_to_video("a red square moves right on a black background", seed=0, settings=QUICK)
    assert frames.shape == (world.FRAMES, world.HEIGHT, world.WIDTH, 3) and frames.dtype.name == "uint8"

    # --vae-from and --dit-images-from: the same VAE and first-frame DiT, the clip phase trained
    # again (with a setting of its own); the record counts the reused phases' own seconds
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_toy_model.py"), "--out", str(tmp_path / "again"),
                            "--work", str(tmp_path / "work2"), "--vae-from", str(tmp_path / "work"),
                            "--dit-images-from", str(tmp_path / "work"), "--dit-clip-setting", "sample_ratios=[1,1,2]",
                            "--clips", "1", "--combinations", "3", "--dit-steps", "2", "--dit-batch", "16",
                            "--preview-clips", "2"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    second = json.loads((tmp_path / "again" / "training.json").read_text())
    vae_file = Path("causal_video_vae", "diffusion_pytorch_model.safetensors")
    assert (tmp_path / "again" / vae_file).read_bytes() == (out / vae_file).read_bytes()
    assert (second["vae"], second["dit_images"], second["dit"]["step"]) == (record["vae"], record["dit_images"], 2)
    reused = {phase: json.loads((tmp_path / "work" / phase / "summary.json").read_text())["wall_s"]
              for phase in ("vae_images", "vae", "dit_images")}
    assert second["seconds"]["train-vae"]["wall_s"] > reused["vae_images"] + reused["vae"]
    assert second["seconds"]["train-dit"]["wall_s"] > reused["dit_images"]
    assert second["total"]["wall_s"] > reused["vae_images"] + reused["vae"] + second["seconds"]["train-dit"]["wall_s"]
    assert [c for c in second["commands"] if " train-vae " in c] == \
        [c.replace("<work>", "<vae-from>") for c in record["commands"] if " train-vae " in c]
    dit_commands = [c for c in second["commands"] if " train-dit " in c]
    first_frames = next(c for c in record["commands"] if " train-dit " in c)
    assert dit_commands[0] == first_frames.replace("<work>", "<dit-images-from>")
    assert "sample_ratios=[1,1,2]" in dit_commands[1]

    # --vae-from MODEL: the VAE a model folder ships, as it is (already normalised), with the
    # losses, latent statistics, commands and seconds its training.json states
    shipped = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_toy_model.py"), "--out", str(tmp_path / "third"),
                              "--work", str(tmp_path / "work3"), "--vae-from", str(out), "--clips", "1",
                              "--combinations", "3", "--dit-image-steps", "2", "--dit-steps", "2",
                              "--dit-image-batch", "16", "--dit-batch", "16", "--preview-clips", "2"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert shipped.returncode == 0, shipped.stdout[-3000:] + shipped.stderr[-3000:]
    third = json.loads((tmp_path / "third" / "training.json").read_text())
    assert (tmp_path / "third" / vae_file).read_bytes() == (out / vae_file).read_bytes()
    assert [third[k] for k in ("vae_images", "vae", "latent_channels")] == \
        [record[k] for k in ("vae_images", "vae", "latent_channels")]
    assert third["seconds"]["train-vae"]["wall_s"] >= record["seconds"]["train-vae"]["wall_s"]
    assert [c for c in third["commands"] if " train-vae " in c] == \
        [c.replace("<work>", "<vae-from>") for c in record["commands"] if " train-vae " in c]
    assert (third["dit_images"]["step"], third["dit"]["step"]) == (2, 2)

    # a first-frame DiT is reused only with the VAE it learned from
    alone = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_toy_model.py"), "--work", str(tmp_path / "w3"),
                            "--dit-images-from", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True)
    assert alone.returncode == 2 and "--dit-images-from needs --vae-from" in alone.stderr


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> ToyModel:
    from tiny_checkpoints import WORDS, write_random_model_folder, write_text_encoder_folder

    root = tmp_path_factory.mktemp("random")
    text = write_text_encoder_folder(root / "text", words=WORDS + world.vocabulary())
    return ToyModel(write_random_model_folder(root / "model", text))


def test_every_check_fails_on_random_weights(random_model):
    """Text-to-video, image-to-video and continuation, with the checks' own tolerances, on
    untrained weights of the toy layout: none passes (their videos are grey noise)."""
    verdicts = [checks.check_text_to_video(random_model, case, seed, QUICK)
                for case in checks.T2V_CASES[:4] for seed in range(2)]
    verdicts += [checks.check_image_to_video(random_model, checks.scene_for(seed), seed, QUICK) for seed in range(3)]
    verdicts += [checks.check_continuation(random_model, checks.scene_for(seed), seed, QUICK) for seed in range(3)]
    assert checks.success_rate(verdicts) == 0.0, [v.reasons for v in verdicts if v.ok]
    assert all(v.reasons for v in verdicts)


def test_normalizing_the_latent_channels_keeps_the_reconstructions(tmp_path):
    """The VAE with normalised channels decodes its own latents to the same pixels, each channel
    of its later-frame means, normalised as the variant normalises them, has mean 0 and std 1,
    and its posterior is a point mass at the mean."""
    import torch

    from pyramid_core.latents import normalize_latents
    from pyramid_core.models.vae import CausalVideoVAE
    from pyramid_core.training.data import write_jsonl
    from pyramid_core.training.synthetic import write_video
    from pyramid_core.video_io import frames_to_pixels, read_video
    from train_toy_model import VAE_CONFIG, VARIANT, normalize_latent_channels

    torch.manual_seed(0)
    folder = tmp_path / "vae"
    CausalVideoVAE(**{k: v for k, v in VAE_CONFIG.items() if not k.startswith("_")}).save_pretrained(folder)
    rng = np.random.default_rng(0)
    clips = [world.render(world.random_scene(rng, "red", "circle", "left")) for _ in range(3)]
    for i, clip in enumerate(clips):
        write_video(tmp_path / f"{i}.mp4", clip, world.FPS)
    write_jsonl(tmp_path / "clips.jsonl", [{"video": f"{i}.mp4"} for i in range(3)])

    def encode_decode(clip):
        vae = CausalVideoVAE.from_pretrained(str(folder)).float().eval()
        with torch.no_grad():
            means = vae.encode(frames_to_pixels(torch.from_numpy(clip))).mode()
            return means, vae.decode(means)

    before = encode_decode(clips[0])[1]
    measured = normalize_latent_channels(folder, tmp_path / "clips.jsonl")
    means, after = encode_decode(clips[0])
    assert max(measured["later_frame_std"]) > 2 * min(measured["later_frame_std"])   # uneven before
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    # measured on the mp4s as they read back (lossy), as the script measures them
    written = [read_video(tmp_path / f"{i}.mp4")[0].numpy() for i in range(3)]
    later = torch.cat([normalize_latents(encode_decode(clip)[0], VARIANT)[:, :, 1:] for clip in written], 2)
    later = later.transpose(0, 1).flatten(1).double()                       # (C, samples)
    torch.testing.assert_close(later.mean(1), torch.zeros(later.shape[0], dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(later.std(1), torch.ones(later.shape[0], dtype=torch.float64), atol=1e-3, rtol=0)
    vae = CausalVideoVAE.from_pretrained(str(folder)).float().eval()
    with torch.no_grad():
        posterior = vae.encode(frames_to_pixels(torch.from_numpy(clips[1])))
    assert posterior.std.max().item() < 1e-6          # sampling it gives the means the DiT learned from
    torch.testing.assert_close(posterior.sample(torch.Generator().manual_seed(0)), posterior.mode(), atol=1e-5, rtol=0)
