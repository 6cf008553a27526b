"""The committed toy model (``toy_model/pyramid-flow-toy``, made by ``scripts/train_toy_model.py``)
makes what it is asked for, judged from the decoded pixels by :mod:`pyramid_core.toy.checks`
through the library's own pipelines: text-to-video, image-to-video and continuation.

Each test states the success rate it requires over its prompts and seeds. The rates are set
below what the model reached when it was committed (see its MODEL_CARD.md), so that a change to
the sampler, the history, the VAE helpers or the loaders that breaks generation fails here,
while the random stand-ins pass none of these checks
(``test_train_toy_model.py::test_every_check_fails_on_random_weights``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from pyramid_core.toy import checks
from pyramid_core.toy.model import ToyModel, ToySettings

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "toy_model" / "pyramid-flow-toy"
SETTINGS = ToySettings()            # 10 steps per stage, guidance 4 (video units 2): the benchmark's top row
T2V_SEEDS = range(4)                # per prompt of checks.T2V_CASES: 32 videos
I2V_SCENES = range(32)              # image-to-video: 32 scenes (checks.scene_for), scene k at seed k
SCENE_SEEDS = range(16)             # continuation and the VAE's reconstructions: 16 scenes

# Passes required: three quarters of the rates the toy model is held to (text-to-video 80%,
# image-to-video 70%, continuation 85%), rounded up. The model passes more (its MODEL_CARD.md),
# a margin for another CPU's rounding, which moves a few videos across a threshold, while a
# broken sampler, history or loader passes none (as the random stand-ins pass none:
# test_train_toy_model.py::test_every_check_fails_on_random_weights). Image-to-video judges 32
# scenes rather than 16 so that its margin is more than two videos.
# The model passed the same counts on ATen's AVX2 kernels on one thread and on its portable
# kernels (scripts/run_numeric_tests_elsewhere.sh's settings).
T2V_MIN_PASSED = 20                 # of 32 (0.75 * 80% = 60%); the model: 26 (14 of the 16 held-out prompts' videos)
I2V_MIN_PASSED = 17                 # of 32 (0.75 * 70% = 52.5%); the model: 22
CONTINUATION_MIN_PASSED = 11        # of 16 (0.75 * 85% = 64%); the model: 14
# The VAE alone (checks.check_reconstruction, no sampling) passes each check on 14 of the 16
# scenes' reconstructions; the two others are green triangles on gray, whose green it loses
# after frame 2. Its round trip has no random draws, so the margin is for rounding only.
RECONSTRUCTION_MIN_PASSED = {"t2v": 12, "i2v": 12, "continue": 12}   # of 16


@pytest.fixture(scope="module")
def toy() -> ToyModel:
    assert MODEL.is_dir(), f"{MODEL} is missing: it is committed; rebuild it with scripts/train_toy_model.py"
    return ToyModel(MODEL)


def _report(verdicts) -> str:
    return "\n".join(f"{'ok ' if v.ok else 'BAD'} {v.measures} {v.reasons}" for v in verdicts)


def test_text_to_video_draws_the_prompted_shape_and_colour_moving_the_prompted_way(toy):
    """Every prompt of checks.T2V_CASES (half of them combinations held out of training): the
    prompted colour, in the prompted shape in most frames, moves the prompted way."""
    verdicts = [checks.check_text_to_video(toy, case, seed, SETTINGS)
                for case in checks.T2V_CASES for seed in T2V_SEEDS]
    assert sum(v.ok for v in verdicts) >= T2V_MIN_PASSED, _report(verdicts)


def test_image_to_video_starts_from_the_image_and_keeps_its_shape_while_it_moves(toy):
    verdicts = [checks.check_image_to_video(toy, checks.scene_for(seed), seed, SETTINGS) for seed in I2V_SCENES]
    assert sum(v.ok for v in verdicts) >= I2V_MIN_PASSED, _report(verdicts)


def test_continuation_keeps_the_colour_and_the_direction_of_motion_across_the_seam(toy):
    verdicts = [checks.check_continuation(toy, checks.scene_for(seed), seed, SETTINGS) for seed in SCENE_SEEDS]
    assert sum(v.ok for v in verdicts) >= CONTINUATION_MIN_PASSED, _report(verdicts)


def test_the_vae_alone_passes_every_check_on_its_reconstructions(toy):
    """The ceiling of any DiT on this VAE: rendered clips through the VAE alone, judged as
    text-to-video (with the shape), image-to-video and continuation. A helper that breaks the
    round trip (the latent normalisation, the causal first frame, decoding in chunks) fails
    here without sampling; and the DiT's checks above are then read against this ceiling."""
    judged = [checks.check_reconstruction(toy, checks.scene_for(seed)) for seed in SCENE_SEEDS]
    for name, need in RECONSTRUCTION_MIN_PASSED.items():
        verdicts = [j[name] for j in judged]
        assert sum(v.ok for v in verdicts) >= need, f"{name}:\n{_report(verdicts)}"


def test_the_committed_model_is_the_scripts_fp16_output():
    """The folder holds what the script exports (official layout, fp16) and its training record."""
    record = json.loads((MODEL / "training.json").read_text())
    assert record["commands"] and all(c.startswith("python -m pyramid_core ") for c in record["commands"])
    for name in ("causal_video_vae", "diffusion_transformer_384p"):
        with safe_open(str(MODEL / name / "diffusion_pytorch_model.safetensors"), "pt") as weights:
            assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"F16"}, name


def test_its_preview_colours_show_what_the_vae_decodes():
    """``preview.json`` (fit-preview of the toy VAE, what the page's toy graphs pick) turns a
    clip's latents into the clip's colours: on each background, a fraction of the error the
    released VAE's built-in colours make there (those show a gray scene cyan)."""
    import numpy as np
    import torch

    from pyramid_core.latents import normalize_latents
    from pyramid_core.loading import load_vae
    from pyramid_core.preview import BUILTIN_FACTORS, PreviewFactors, latent_preview_rgb
    from pyramid_core.toy import world
    from pyramid_core.variants import get_variant
    from pyramid_core.video_io import frames_to_pixels

    vae = load_vae(str(MODEL / "causal_video_vae"), dtype="fp32", device="cpu")
    fitted, variant = PreviewFactors.load(MODEL / "preview.json"), get_variant("miniflux-384p")
    rng = np.random.default_rng(5)
    for background in world.BACKGROUNDS:
        pixels = frames_to_pixels(torch.from_numpy(world.render(
            world.random_scene(rng, "red", "square", "right", background)))[None])          # (1, 3, 17, 128, 128)
        with torch.no_grad():
            latents = normalize_latents(vae.encode(pixels).mode(), variant, first_frame=0)
        # the last frame's colours at the latent's size (8x8 pixel means), in [0, 1]
        target = torch.nn.functional.avg_pool2d(pixels[0, :, -1], 8).permute(1, 2, 0).add(1).div(2)
        error = {name: float((latent_preview_rgb(latents[0, :, -1], variant, False, factors) - target).abs().mean())
                 for name, factors in (("fitted", fitted), ("built-in", BUILTIN_FACTORS))}
        assert error["fitted"] < 0.15 and error["fitted"] < 0.6 * error["built-in"], (background, error)
