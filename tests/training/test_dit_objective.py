"""Behaviour of the pyramid training objective beyond the golden step: shapes, the temporal
pyramid's history plan, determinism from the caller's generator, and clear errors."""

from __future__ import annotations

import pytest
import torch

from pyramid_core.scheduling import PyramidFlowScheduler
from pyramid_core.training.dit_objective import (HistoryClip, PyramidObjective, TextBatch, build_training_batch,
                                                 history_plan, sample_timestep_indices, spatial_pyramid,
                                                 units_per_stage)

SCHEDULER = PyramidFlowScheduler()


def text(n: int, length: int = 4) -> TextBatch:
    return TextBatch(torch.randn(n, length, 8), torch.ones(n, length, dtype=torch.int64), torch.randn(n, 6))


NULL = TextBatch(torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.int64), torch.zeros(1, 6))


def batch(latents, objective, seed=0, step=0, features=None):
    features = text(latents.shape[0]) if features is None else features
    return build_training_batch(latents, features, objective, SCHEDULER, null_text=NULL,
                                generator=torch.Generator().manual_seed(seed), step=step)


def test_history_plan_follows_the_temporal_pyramid():
    # top stage, 5 units: unit 1 back at stage 2, unit 2 at stage 1, the two oldest at stage 0
    assert history_plan(2, 5, 1) == [HistoryClip(2, 3, 4), HistoryClip(1, 2, 3), HistoryClip(0, 0, 2)]
    assert history_plan(0, 4, 1) == [HistoryClip(0, 2, 3), HistoryClip(0, 0, 2)]
    assert history_plan(1, 1, 1) == []
    # two frames per unit after the single first frame: frames 0 | 1-2 | 3-4 | 5-6
    assert history_plan(2, 4, 2) == [HistoryClip(2, 3, 5), HistoryClip(1, 1, 3), HistoryClip(0, 0, 1)]


def test_history_lengths_cycle_and_keep_the_token_budget():
    objective = PyramidObjective(max_latent_frames=5)
    seen = [units_per_stage(step, objective, available_units=5) for step in range(5)]
    assert [u[-1] for u in seen] == [1, 2, 3, 4, 5]
    assert all(u[0] == u[1] == 6 - u[2] or u[0] == 5 for u in seen)
    assert units_per_stage(4, objective, available_units=2) == [1, 1, 2]


@pytest.mark.parametrize("temporal_pyramid", [True, False])
def test_batch_structure_and_velocity_target(temporal_pyramid):
    objective = PyramidObjective(sample_ratios=(1, 2, 1), temporal_pyramid=temporal_pyramid, max_latent_frames=3,
                                 cfg_rate=0.0)
    latents = torch.randn(8, 16, 3, 16, 16)
    out = batch(latents, objective, step=1)
    assert out.stages == [0, 1, 1, 2]
    assert out.timesteps.shape == (8,) and out.text.embeds.shape[0] == 8
    sizes = [4, 8, 8, 16]
    for clips, target, size in zip(out.sample, out.targets, sizes):
        assert clips[-1].shape[0] == 2 and clips[-1].shape[-1] == size and target.shape == clips[-1].shape
        assert clips[-1].shape[2] == (1 if temporal_pyramid else 3)
    # top stage, full sequence: noisy = r * noise + (1 - r) * x, target = noise - x
    if not temporal_pyramid:
        x, r = latents[3::4], out.sigmas[3].view(-1, 1, 1, 1, 1)
        noise = out.targets[3] + x
        assert torch.allclose(out.sample[3][-1], r * noise + (1 - r) * x, atol=1e-5)
    # stage timesteps lie inside the stage's share of 0..1000, higher stages lower
    for stage, t in zip(out.stages, out.timesteps.view(2, 4).T):
        grid = SCHEDULER.tables.stage_timesteps[stage]
        assert ((t >= grid.min() - 1e-3) & (t <= grid.max() + 1e-3)).all()


def test_draws_come_only_from_the_generator():
    objective = PyramidObjective(max_latent_frames=3, cfg_rate=0.5)
    latents, features = torch.randn(4, 16, 3, 8, 8), text(4)
    state = torch.get_rng_state()
    a, b = batch(latents, objective, 5, features=features), batch(latents, objective, 5, features=features)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for cx, cy in zip(a.sample, b.sample) for x, y in zip(cx, cy))
    assert torch.equal(a.timesteps, b.timesteps) and torch.equal(a.dropped, b.dropped)
    c = batch(latents, objective, 6, features=features)
    assert not torch.equal(a.timesteps, c.timesteps)


def test_dropped_rows_get_the_null_text():
    objective = PyramidObjective(max_latent_frames=3, cfg_rate=1.0)
    out = batch(torch.randn(4, 16, 3, 8, 8), objective)
    assert out.dropped.all() and torch.equal(out.text.embeds, NULL.embeds.expand(4, -1, -1))
    with pytest.raises(ValueError, match="null_text"):
        build_training_batch(torch.randn(4, 16, 3, 8, 8), text(4), objective, SCHEDULER,
                             generator=torch.Generator())


@pytest.mark.parametrize("scheme", ["uniform", "logit_normal", "mode"])
def test_timestep_schemes_stay_on_the_grid(scheme):
    objective = PyramidObjective(timestep_sampling=scheme)
    idx = sample_timestep_indices(2000, objective, 1000, torch.Generator().manual_seed(0))
    assert idx.min() >= 0 and idx.max() <= 999
    if scheme == "logit_normal":  # concentrated in the middle of the stage
        assert 400 < idx.float().mean() < 600 and idx.float().std() < 0.8 * idx.float().new_tensor(288.0)


def test_noise_pyramid_keeps_unit_variance():
    noise = torch.randn(2, 16, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    for level in spatial_pyramid(noise, 3, gain=2.0):
        assert abs(level.std().item() - 1) < 0.05


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------

def test_latents_of_the_wrong_shape_are_rejected():
    objective = PyramidObjective(max_latent_frames=3)
    with pytest.raises(ValueError, match=r"\(N, C, T, H, W\)"):
        batch(torch.randn(4, 16, 8, 8), objective)
    with pytest.raises(ValueError, match="multiple of 8"):
        batch(torch.randn(4, 16, 3, 12, 16), objective)
    with pytest.raises(ValueError, match="multiple of sum\\(sample_ratios\\)=4"):
        batch(torch.randn(6, 16, 3, 8, 8), objective)
    with pytest.raises(ValueError, match="text features have 3 rows for 4 latents"):
        build_training_batch(torch.randn(4, 16, 3, 8, 8), text(3), objective, SCHEDULER, null_text=NULL)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sample_ratios=(1, 0, 1)), "positive integer"),
    (dict(sample_ratios=()), "positive integer"),
    (dict(frame_per_unit=0), "frame_per_unit"),
    (dict(max_latent_frames=16, video_sync_group=3), "video_sync_group"),
    (dict(max_latent_frames=4, video_sync_group=8), "video_sync_group"),
    (dict(corrupt_ratio=1.5), "corrupt_ratio"),
    (dict(timestep_sampling="cosine"), "timestep_sampling"),
])
def test_impossible_objective_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PyramidObjective(**kwargs)


def test_ratios_must_match_the_scheduler_stages():
    objective = PyramidObjective(sample_ratios=(1, 1), max_latent_frames=3)
    with pytest.raises(ValueError, match="one ratio per stage"):
        batch(torch.randn(4, 16, 3, 8, 8), objective)
