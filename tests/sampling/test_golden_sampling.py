"""End-to-end sampling against the reference runs recorded in tests/data/golden.

Driven by golden.json: every section with recorded DiT outputs (``<run>.call<i>.out``) and
final latents is replayed with our pipelines, the tiny golden DiT and VAE, the recorded
stand-in text embeddings and the reference's noise injected (recorded initial noise, or
``torch.randn`` of the recorded seed where it was not recorded; block noise and VAE
posterior noise from the recorded tensors).
"""

from __future__ import annotations

import re

import pytest
import torch
from golden_utils import golden, has_tensor, load_nested, load_tensor, section
from sampling_helpers import RecordingDiT, ReplayNoise

from pyramid_core.latents import decode_from_latents
from pyramid_core.models.text_encoders import PromptEmbeddings
from pyramid_core.noise import coarsen_noise
from pyramid_core.sampling import TextConditioning, encode_frames, image_to_pixels, image_to_video, text_to_video
from pyramid_core.scheduling import PyramidFlowScheduler
from pyramid_core.sizes import pixel_frames
from pyramid_core.variants import VARIANTS
from pyramid_core.video_io import frames_to_uint8

ATOL = 1e-4


def _runs(kind: str) -> list[str]:
    """Recorded end-to-end runs: ``t2v`` (recorded initial noise) or ``i2v`` (input image)."""
    marker = "initial_latents" if kind == "t2v" else "input_image_uint8"
    return [name for name, spec in golden()["sections"].items()
            if isinstance(spec, dict) and "num_dit_calls" in spec and has_tensor(f"{name}.{marker}")]


def _model_key(run: dict) -> str:
    """The ``weights`` entry of the run's DiT (its class is named in the runner description)."""
    for key, spec in section("weights").items():
        if isinstance(spec, dict) and spec.get("class") != "CausalVideoVAE" and spec["class"] in run["runner"]["dit"]:
            return key
    raise KeyError(run["runner"]["dit"])


def _vae_key() -> str:
    return next(k for k, s in section("weights").items() if isinstance(s, dict) and s.get("class") == "CausalVideoVAE")


def _variant(run: dict):
    """Our variant with the run's latent normalisation."""
    recorded = run.get("vae_shift_scale")
    family = "flux" if "Flux" in run["runner"]["dit"] else "mmdit"
    for variant in VARIANTS.values():
        if variant.family == family and (recorded is None or abs(variant.image_latent_shift - recorded["image_shift"]) < 1e-9):
            return variant
    raise KeyError(family)


def _scheduler(run: dict) -> PyramidFlowScheduler:
    config = run["runner"]["effective"]["scheduler_config"]
    return PyramidFlowScheduler(num_train_timesteps=config["num_train_timesteps"], shift=config["shift"],
                                stage_range=config["stage_range"], gamma=config["gamma"])


def _text(name: str) -> TextConditioning:
    def embeddings(cond):
        return PromptEmbeddings(*(load_tensor(f"{name}.text.{cond}.{key}") for key in ("prompt_embeds", "attention_mask", "pooled")))
    return TextConditioning(embeddings("pos"), embeddings("neg"))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.float() - b.float()).abs().max().item()


def _full_input_calls(name: str) -> dict[int, str]:
    """``{call index: prefix}`` of the run's calls stored with every input (history included),
    e.g. ``flux.infer_hist``; their description names the call (``call #17 of the t2v run``)."""
    family, kind = name.split(".")[:2]
    calls = {}
    for tensor, spec in golden()["tensors"].items():
        match = re.fullmatch(rf"({re.escape(family)}\.infer_\w+)\.in\.sample\.0\.0", tensor)
        found = re.search(rf"call #(\d+) of the {re.escape(kind)} run", spec.get("desc", ""))
        if match and found:
            calls[int(found.group(1))] = match.group(1)
    return calls


def _check_calls(name: str, run: dict, dit: RecordingDiT) -> int:
    """Compare every recorded part of every DiT call; returns how many tensors were compared."""
    assert len(dit.calls) == run["num_dit_calls"]
    shapes = {c["call"]: c for c in run.get("dit_calls", [])}
    full = _full_input_calls(name)
    compared = 0
    for index, (clips, timestep, out) in enumerate(dit.calls):
        recorded = {}
        if index in shapes:
            assert [list(c.shape) for c in clips] == shapes[index]["clip_shapes"], f"call {index} clips"
            assert timestep.tolist() == pytest.approx(shapes[index]["timestep"], abs=1e-3)
        if has_tensor(f"{name}.call{index}.out"):
            recorded[f"call {index} output"] = (out, load_tensor(f"{name}.call{index}.out"))
        if has_tensor(f"{name}.call{index}.in.current"):
            recorded[f"call {index} input"] = (clips[-1], load_tensor(f"{name}.call{index}.in.current"))
            recorded[f"call {index} timestep"] = (timestep, load_tensor(f"{name}.call{index}.in.timestep_ratio"))
        if index in full:
            prefix = full[index]
            stored = load_nested(f"{prefix}.in.sample")[0]
            assert len(stored) == len(clips), f"call {index}: {len(clips)} clips, recorded {len(stored)}"
            recorded.update({f"call {index} clip {j}": pair for j, pair in enumerate(zip(clips, stored))})
            recorded[f"call {index} output (full inputs)"] = (out, load_nested(f"{prefix}.out")[0])
            recorded[f"call {index} timestep (full inputs)"] = (timestep, load_tensor(f"{prefix}.in.timestep_ratio"))
        for what, (ours, theirs) in recorded.items():
            assert _max_diff(ours, theirs) <= ATOL, what
        compared += len(recorded)
    return compared


@pytest.mark.parametrize("name", _runs("t2v"))
def test_text_to_video_reproduces_the_reference(name, golden_models):
    run, args = section(name), section(name)["call_args"]
    scheduler = _scheduler(run)
    full_shape = tuple(golden()["tensors"][f"{name}.initial_latents"]["shape"])
    raw = load_tensor(f"{name}.initial_latents")
    assert tuple(raw.shape) == full_shape
    noise = coarsen_noise(raw, scheduler.num_stages)
    dit = RecordingDiT(golden_models(_model_key(run)))
    blocks = ReplayNoise(load_nested(f"{name}.block_noise"))

    latents = text_to_video(
        dit, _text(name), width=args["width"], height=args["height"], num_frames=pixel_frames(args["temp"]),
        variant=_variant(run), steps=args["num_inference_steps"], video_steps=args["video_num_inference_steps"],
        guidance_scale=args["guidance_scale"], video_guidance_scale=args["video_guidance_scale"],
        scheduler=scheduler, noise=noise, block_noise=blocks,
    )
    assert blocks.used == len(blocks.tensors)
    assert _check_calls(name, run, dit) > 0
    assert _max_diff(latents, load_tensor(f"{name}.output_latents")) <= ATOL

    frames_name = run.get("decoded_frames")
    if frames_name:
        pixels = decode_from_latents(golden_models(_vae_key()), latents, _variant(run), chunk_size=1)
        frames = frames_to_uint8(pixels)                              # (B, T, H, W, 3)
        expected = load_tensor(frames_name)                           # (B*T, H, W, 3)
        assert _max_diff(frames.flatten(0, 1), expected) <= 1         # uint8 rounding of ~1e-5 differences


@pytest.mark.parametrize("name", _runs("i2v"))
def test_image_to_video_reproduces_the_reference(name, golden_models):
    run, args = section(name), section(name)["call_args"]
    scheduler = _scheduler(run)
    variant = _variant(run)
    image = image_to_pixels(load_tensor(f"{name}.input_image_uint8"))   # (1, 3, H, W)
    temp = args["temp"]
    latent_hw = (image.shape[-2] // 8, image.shape[-1] // 8)
    # The reference draws the noise of all `temp` frames with torch.randn (not recorded for
    # this run: rebuilt here, to within torch's CPU kernel paths, far below ATOL) and
    # denoises unit k from frame k-1; ours takes the new frames' own slices, so inject.
    raw = torch.randn((1, 16, temp, *latent_hw), generator=torch.Generator().manual_seed(run["generator_seed"]))
    full = coarsen_noise(raw, scheduler.num_stages)
    dit = RecordingDiT(golden_models(_model_key(run)))
    blocks = ReplayNoise(load_nested(f"{name}.block_noise"))
    vae = golden_models(_vae_key())

    latents = image_to_video(
        dit, _text(name), image=image, vae=vae, num_frames=pixel_frames(temp), variant=variant,
        video_steps=args["num_inference_steps"], video_guidance_scale=args["video_guidance_scale"],
        scheduler=scheduler, noise=full[:, :, : temp - 1], block_noise=blocks,
        posterior_noise=load_tensor(f"{name}.vae_posterior_eps"),
    )
    assert blocks.used == len(blocks.tensors)
    assert _check_calls(name, run, dit) > 0
    assert _max_diff(latents, load_tensor(f"{name}.output_latents")) <= ATOL
    # The same through the latent entry point.
    image_latent = encode_frames(vae, image, variant, posterior_noise=load_tensor(f"{name}.vae_posterior_eps"))
    assert _max_diff(image_latent, load_tensor(f"{name}.output_latents")[:, :, :1]) <= ATOL
