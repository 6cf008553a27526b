"""The sampling blocks and pipelines: determinism, history, continuation, progress, bad input."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import FakeDiT, RecordNoise, ReplayNoise, random_text

import pyramid_core.noise as noise_module
from pyramid_core.noise import initial_noise
from pyramid_core.sampling import (
    HistoryConfig,
    SamplingInterrupted,
    TextConditioning,
    build_temporal_history,
    continue_video,
    denoise_stage,
    enter_stage,
    generator_block_noise,
    image_to_video,
    latent_pyramid,
    sample_unit,
    text_to_video,
)
from pyramid_core.sampling.settings import SamplingSettings, UnitSettings
from pyramid_core.scheduling import PyramidFlowScheduler

TINY = dict(width=128, height=64)


def _t2v(dit, frames=17, seed=0, **kwargs):
    kwargs.setdefault("steps", 1)
    kwargs.setdefault("video_steps", 1)
    return text_to_video(dit, random_text(), num_frames=frames, generator=torch.Generator().manual_seed(seed),
                         **TINY, **kwargs)


# --------------------------------------------------------------------------------------
# Determinism (real tiny DiT)
# --------------------------------------------------------------------------------------

def test_same_seed_same_video_bit_exact(golden_models):
    dit = golden_models("flux_tiny")
    a, b, c = _t2v(dit, seed=3), _t2v(dit, seed=3), _t2v(dit, seed=4)
    assert a.shape == (1, 16, 3, 8, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_no_lapack_on_the_path_of_a_video(golden_models, monkeypatch):
    """The block-noise factor is a closed form: with every LAPACK factorisation made to raise
    (on some CPUs MKL cannot factor the singular covariance at all), a video still comes out."""
    def refuse(*args, **kwargs):
        raise AssertionError("LAPACK was called")

    for name in ("cholesky", "cholesky_ex", "eigh", "eigvalsh", "svd", "qr", "lu_factor", "solve"):
        monkeypatch.setattr(torch.linalg, name, refuse)
    monkeypatch.setattr(torch, "cholesky", refuse)
    noise_module._cholesky_float64.cache_clear()
    video = _t2v(golden_models("flux_tiny"), frames=17, seed=5)
    assert video.shape == (1, 16, 3, 8, 16) and torch.isfinite(video).all()


# --------------------------------------------------------------------------------------
# Temporal history
# --------------------------------------------------------------------------------------

def _levels_of(history, stage):
    return [(c.shape[2], c.shape[3]) for c in history.clips[stage]]


def test_history_reproduces_the_reference_pyramid():
    past = torch.randn(1, 16, 5, 8, 16)
    history = build_temporal_history(past, num_stages=3)
    # (frames, height) per clip, oldest first: see the module docstring's table.
    assert _levels_of(history, 0) == [(4, 2), (1, 2)]
    assert _levels_of(history, 1) == [(4, 2), (1, 4)]
    assert _levels_of(history, 2) == [(3, 2), (1, 4), (1, 8)]
    levels = latent_pyramid(past, 3)
    assert torch.equal(history.clips[2][-1], past[:, :, 4:])
    assert torch.equal(history.clips[2][1], levels[1][:, :, 3:4])
    assert torch.equal(history.clips[2][0], levels[0][:, :, :3])
    # Bilinear halving of exact 2x2 blocks is their mean.
    torch.testing.assert_close(levels[1], past.unflatten(3, (4, 2)).unflatten(5, (8, 2)).mean(dim=(4, 6)))


def test_history_controls():
    past = torch.randn(1, 16, 6, 8, 16)
    two_recent = build_temporal_history(past, 3, config=HistoryConfig(recent_units=2))
    assert _levels_of(two_recent, 2) == [(3, 2), (1, 4), (1, 8), (1, 8)]
    assert _levels_of(two_recent, 0) == [(4, 2), (1, 2), (1, 2)]
    short = build_temporal_history(past, 3, config=HistoryConfig(max_frames=2))
    assert [h.frames(k) for h in (short,) for k in range(3)] == [2, 2, 2]
    assert torch.equal(short.clips[2][-1], past[:, :, -1:])
    assert build_temporal_history(None, 3).clips == ((), (), ())
    for bad in (dict(recent_units=0), dict(max_frames=0), dict(max_frames=2.5)):
        with pytest.raises(ValueError):
            HistoryConfig(**bad)


def test_bounded_history_bounds_the_dit_tokens():
    def max_tokens(frames, history):
        dit = FakeDiT()
        _t2v(dit, frames=frames, history=history)
        return max(tokens for _, tokens, _ in dit.calls)

    unbounded = [max_tokens(f, HistoryConfig()) for f in (17, 33, 49)]
    bounded = [max_tokens(f, HistoryConfig(max_frames=3)) for f in (17, 33, 49)]
    assert unbounded[0] < unbounded[1] < unbounded[2]        # the reference grows with length
    assert bounded[1] == bounded[2] <= unbounded[1]          # bounded stops growing


# --------------------------------------------------------------------------------------
# Continuation and image-to-video reproduce generating in one go
# --------------------------------------------------------------------------------------

def test_continuation_reproduces_generation_in_one_go(golden_models):
    dit = golden_models("flux_tiny")
    scheduler = PyramidFlowScheduler()
    noise = initial_noise((1, 16, 4, 8, 16), 3, generator=torch.Generator().manual_seed(11))
    recorder = RecordNoise(generator_block_noise(scheduler.gamma, torch.Generator().manual_seed(12)))
    text = random_text(seed=5)
    settings = dict(video_steps=[1, 2, 1], video_guidance_scale=[4.0, 5.0, 6.0])
    whole = text_to_video(dit, text, num_frames=25, steps=1, noise=noise, block_noise=recorder, **TINY, **settings)
    assert len(recorder.drawn) == 4 * 2

    continued = continue_video(dit, text, video_latents=whole[:, :, :2], num_frames=25, noise=noise[:, :, 2:],
                               block_noise=ReplayNoise(recorder.drawn[4:]), **settings)
    assert torch.equal(continued, whole)
    from_image = image_to_video(dit, text, image_latent=whole[:, :, :1], num_frames=25, noise=noise[:, :, 1:],
                                block_noise=ReplayNoise(recorder.drawn[2:]), **settings)
    assert torch.equal(from_image, whole)


def test_continuation_to_any_length_with_bounded_history():
    dit = FakeDiT()
    clip = torch.randn(1, 16, 3, 8, 16)
    out = continue_video(dit, random_text(), video_latents=clip, num_frames=1 + 8 * 9, video_steps=1,
                         history=HistoryConfig(max_frames=4), generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 16, 10, 8, 16) and torch.equal(out[:, :, :3], clip)
    assert max(shape[2] for _, _, shapes in dit.calls for shape in shapes[:-1]) <= 4


# --------------------------------------------------------------------------------------
# Blocks alone, guidance, progress
# --------------------------------------------------------------------------------------

def test_blocks_compose_to_the_unit_sampler():
    dit, text, scheduler = FakeDiT(), random_text(), PyramidFlowScheduler()
    noise = torch.randn(1, 16, 1, 2, 4, generator=torch.Generator().manual_seed(0))
    blocks = [torch.randn(1, 16, 1, 4, 8), torch.randn(1, 16, 1, 8, 16)]
    settings = UnitSettings.create([2, 1, 1], 5.0, 3)
    by_unit = sample_unit(dit, noise, text, scheduler, settings, block_noise=ReplayNoise(blocks))
    latents = noise
    for stage in range(3):
        if stage:
            latents = enter_stage(latents, scheduler, stage, noise=blocks[stage - 1])
        latents = denoise_stage(dit, latents, text, scheduler, stage, settings.steps[stage], 5.0)
    assert torch.equal(by_unit, latents)


def test_guidance_per_stage_and_off_at_zero():
    dit = FakeDiT()
    positive_only = TextConditioning(random_text().positive)            # no negative needed at scale 0
    text_to_video(dit, positive_only, num_frames=1, steps=[1, 1, 1], guidance_scale=0.0, **TINY)
    assert [batch for batch, _, _ in dit.calls] == [1, 1, 1]
    dit.calls.clear()
    _t2v(dit, frames=1, guidance_scale=[0.0, 2.0, 0.5])
    assert [batch for batch, _, _ in dit.calls] == [1, 2, 2]
    with pytest.raises(ValueError, match="negative"):
        text_to_video(FakeDiT(), positive_only, num_frames=1, steps=1, guidance_scale=3.0, **TINY)


def test_progress_counts_every_step_and_an_exception_interrupts():
    reports = []
    _t2v(FakeDiT(), frames=17, steps=[2, 1, 1], video_steps=[1, 1, 1], callback=reports.append)
    assert [r.step for r in reports] == list(range(1, 11)) and {r.total_steps for r in reports} == {10}
    assert [r.unit_index for r in reports] == [0] * 4 + [1] * 3 + [2] * 3
    assert reports[-1].latents.shape == (1, 16, 1, 8, 16) and reports[0].latents.shape == (1, 16, 1, 2, 4)

    def stop_after_three(info):
        if info.step == 3:
            raise SamplingInterrupted("stop")

    dit = FakeDiT()
    with pytest.raises(SamplingInterrupted):
        _t2v(dit, frames=17, steps=[2, 1, 1], callback=stop_after_three)
    assert len(dit.calls) == 3


def test_batch_of_prompts():
    dit = FakeDiT()
    text = random_text(batch=2)
    out = text_to_video(dit, text, num_frames=9, steps=1, video_steps=1, generator=torch.Generator().manual_seed(0), **TINY)
    assert out.shape == (2, 16, 2, 8, 16) and not torch.equal(out[0], out[1])


# --------------------------------------------------------------------------------------
# Bad input: ValueError before any model runs
# --------------------------------------------------------------------------------------

class _NoVAE:
    def encode(self, *args, **kwargs):
        raise AssertionError("the VAE must not run for bad input")


@pytest.mark.parametrize("kwargs, match", [
    (dict(width=100, height=64, num_frames=17), "width=100"),
    (dict(width=128, height=96, num_frames=17), "height=96"),
    (dict(width=128, height=64, num_frames=10), "1 \\+ 8k"),
    (dict(width=128, height=64, num_frames=17, steps=[1, 1]), "steps has 2 entries"),
    (dict(width=128, height=64, num_frames=17, video_steps=[1, 0, 1]), "video_steps"),
    (dict(width=128, height=64, num_frames=17, guidance_scale=-1.0), "guidance_scale=-1.0"),
    (dict(width=128, height=64, num_frames=17, video_guidance_scale=[1.0, -2.0, 1.0]), "video_guidance_scale"),
])
def test_text_to_video_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        text_to_video(FakeDiT(fail=True), random_text(), **kwargs)


def test_image_and_continuation_reject_bad_input():
    dit, text = FakeDiT(fail=True), random_text()
    image = torch.zeros(1, 3, 64, 128)
    with pytest.raises(ValueError, match="128x64 px but the video was asked to be 256x64"):
        image_to_video(dit, text, image=image, vae=_NoVAE(), num_frames=17, width=256, height=64)
    with pytest.raises(ValueError, match="multiple of 64"):
        image_to_video(dit, text, image=torch.zeros(1, 3, 64, 100), vae=_NoVAE(), num_frames=17)
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        image_to_video(dit, text, image=image, vae=_NoVAE(), num_frames=12)
    with pytest.raises(ValueError, match="video_steps"):
        image_to_video(dit, text, image=image, vae=_NoVAE(), num_frames=17, video_steps=[1, 2])
    with pytest.raises(ValueError, match="exactly one"):
        image_to_video(dit, text, num_frames=17)
    clip = torch.zeros(1, 3, 9, 64, 128)
    with pytest.raises(ValueError, match="does not extend"):
        continue_video(dit, text, video=clip, vae=_NoVAE(), num_frames=9)
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        continue_video(dit, text, video=torch.zeros(1, 3, 8, 64, 128), vae=_NoVAE(), num_frames=17)
    with pytest.raises(ValueError, match="guidance"):
        continue_video(dit, text, video=clip, vae=_NoVAE(), num_frames=17, video_guidance_scale=float("nan"))


def test_settings_accept_scalars_and_lists():
    settings = SamplingSettings.create(3, steps=4, video_steps=[1, 2, 3], guidance_scale=[1, 2, 3])
    assert settings.first_frame.steps == (4, 4, 4) and settings.video.steps == (1, 2, 3)
    assert settings.first_frame.guidance == (1.0, 2.0, 3.0) and settings.video.guidance == (5.0,) * 3
