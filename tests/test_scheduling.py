"""The pyramid scheduler against the reference's golden tables and steps.

Everything golden is read from tests/data/golden/golden.json (names, arguments, seeds), so
a regenerated golden set drops in unchanged.
"""

from __future__ import annotations

import math

import pytest
import torch
from golden_utils import golden, load_nested, load_tensor, section
from reference_tolerances import FP32_EPS, TORCH_RANDN_ACROSS_CPUS, assert_block_noise_matches_reference

from pyramid_core.noise import block_noise, coarsen_noise
from pyramid_core.scheduling import (
    PyramidFlowScheduler,
    compute_stage_tables,
    renoise_coefficients,
    stage_transition,
    upsample_nearest_2x,
)
from pyramid_core.variants import VARIANTS


def _recorded_scheduler_configs() -> list[dict]:
    """The scheduler config recorded with every reference run that built one."""
    configs = []
    for spec in golden()["sections"].values():
        runner = spec.get("runner") if isinstance(spec, dict) else None
        if isinstance(runner, dict) and "scheduler_config" in runner.get("effective", {}):
            configs.append(runner["effective"]["scheduler_config"])
    return configs


def _scheduler_from_golden() -> PyramidFlowScheduler:
    # The constructor the reference used (all recorded runs share it, see the test below).
    config = _recorded_scheduler_configs()[0]
    return PyramidFlowScheduler(
        num_train_timesteps=config["num_train_timesteps"], shift=config["shift"],
        stage_range=config["stage_range"], gamma=config["gamma"],
    )


def _exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(actual, expected), f"max abs diff {(actual - expected).abs().max().item()}"


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------

def test_recorded_runs_share_our_default_config():
    configs = _recorded_scheduler_configs()
    assert configs and all(c == configs[0] for c in configs)
    ours = PyramidFlowScheduler().config
    assert ours["num_train_timesteps"] == configs[0]["num_train_timesteps"]
    assert ours["shift"] == configs[0]["shift"] and ours["gamma"] == configs[0]["gamma"]
    assert ours["stage_range"] == pytest.approx(configs[0]["stage_range"], abs=0)

@pytest.mark.parametrize("table", ["start_sigmas", "end_sigmas", "ori_start_sigmas", "timestep_ratios"])
def test_stage_bounds_match_golden(table):
    meta = golden()
    scheduler = _scheduler_from_golden()
    expected = meta["sections"]["scheduler"][table]
    assert len(getattr(scheduler, table)) == len(expected)
    for stage, value in expected.items():
        ours = getattr(scheduler, table)[int(stage)]
        assert (list(ours) if isinstance(value, list) else ours) == value   # exact float equality


def test_training_grids_match_golden():
    meta = golden()
    scheduler = _scheduler_from_golden()
    spec = meta["sections"]["scheduler"]
    _exact(scheduler.tables.global_sigmas, load_tensor("sched.global_sigmas"))
    assert scheduler.tables.global_sigmas[-1].item() == spec["sigma_min_after_init"]
    assert scheduler.tables.global_sigmas[0].item() == spec["sigma_max_after_init"]
    for stage in range(scheduler.num_stages):
        _exact(scheduler.tables.stage_timesteps[stage], load_tensor(f"sched.timesteps_per_stage.{stage}"))
        _exact(scheduler.stage_sigmas, load_tensor(f"sched.sigmas_per_stage.{stage}"))


@pytest.mark.parametrize("key", sorted(golden()["sections"]["scheduler"]["set_timesteps"]))
def test_set_timesteps_matches_golden(key):
    meta = golden()
    args = meta["tensors"][f"sched.set_timesteps.{key}.timesteps"]["args"]
    scheduler = _scheduler_from_golden()
    scheduler.set_timesteps(args["num_inference_steps"], args["stage_index"])
    _exact(scheduler.timesteps, load_tensor(f"sched.set_timesteps.{key}.timesteps"))
    _exact(scheduler.sigmas, load_tensor(f"sched.set_timesteps.{key}.sigmas"))
    assert scheduler.timesteps.tolist() == meta["sections"]["scheduler"]["set_timesteps"][key]["timesteps"]


def test_step_matches_golden():
    meta = golden()
    spec = meta["sections"]["scheduler"]["step_test"]
    scheduler = _scheduler_from_golden()
    scheduler.set_timesteps(spec["num_inference_steps"], spec["stage_index"])

    # The recorded inputs are torch.randn of the recorded seed (to within its CPU kernel paths).
    generator = torch.Generator().manual_seed(spec["generator_seed"])
    torch.testing.assert_close(torch.randn(spec["sample_shape"], generator=generator),
                               load_tensor("sched.step.sample_in"), atol=TORCH_RANDN_ACROSS_CPUS, rtol=0)

    sample = load_tensor("sched.step.sample_in")
    for k, t in enumerate(scheduler.timesteps):
        assert meta["tensors"][f"sched.step.{k}.prev_sample"]["args"]["timestep"] == t.item()
        model_output = load_tensor(f"sched.step.{k}.model_output")
        sample = scheduler.step(model_output, t.expand(spec["batch"]).float(), sample)
        _exact(sample, load_tensor(f"sched.step.{k}.prev_sample"))


def test_renoise_coefficients_give_the_corrected_start_sigma():
    scheduler = PyramidFlowScheduler()
    for stage in range(1, scheduler.num_stages):
        alpha, beta = scheduler.renoise_coefficients(stage)
        signal = 1 - scheduler.ori_start_sigmas[stage]
        assert alpha * signal == pytest.approx(1 - scheduler.start_sigmas[stage], abs=1e-15)
        assert (alpha, beta) == renoise_coefficients(scheduler.ori_start_sigmas[stage], scheduler.gamma)
        # beta = alpha (1 - signal) / sqrt(gamma)
        assert beta == pytest.approx(alpha * (1 - signal) / math.sqrt(scheduler.gamma))


def test_tables_are_continuous_and_cover_the_timestep_range():
    scheduler = PyramidFlowScheduler()
    ratios = scheduler.timestep_ratios
    assert ratios[0][0] == 0.0 and ratios[-1][1] == 1.0
    assert all(a[1] == b[0] for a, b in zip(ratios, ratios[1:]))
    assert all(s > e for s, e in zip(scheduler.start_sigmas, scheduler.end_sigmas))
    # Re-noising adds noise: each stage starts above the previous stage's end.
    assert all(scheduler.start_sigmas[k] > scheduler.end_sigmas[k - 1] for k in range(1, scheduler.num_stages))
    assert scheduler.ori_start_sigmas[1:] == scheduler.end_sigmas[:-1]


def test_from_variant_uses_the_variant_table():
    for variant in VARIANTS.values():
        scheduler = PyramidFlowScheduler.from_variant(variant)
        assert scheduler.num_stages == variant.num_stages
        assert scheduler.gamma == variant.scheduler_gamma
        assert scheduler.stage_range == tuple(variant.stage_range)


def test_step_keeps_sample_dtype_and_computes_in_fp32():
    scheduler = PyramidFlowScheduler()
    scheduler.set_timesteps(3, 0)
    sample = torch.randn(1, 4, 1, 2, 2, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    velocity = torch.randn(1, 4, 1, 2, 2, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    t = scheduler.timesteps[0].to(torch.bfloat16)          # what a bf16 pipeline passes
    out = scheduler.step(velocity, t, sample)
    assert out.dtype == torch.bfloat16
    expected = sample.float() + (scheduler.sigmas[1] - scheduler.sigmas[0]).item() * velocity.float()
    torch.testing.assert_close(out, expected.to(torch.bfloat16))


# --------------------------------------------------------------------------------------
# Misuse
# --------------------------------------------------------------------------------------

def test_step_before_set_timesteps_is_rejected():
    scheduler = PyramidFlowScheduler()
    x = torch.zeros(1, 2, 1, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 1000.0, x)


def test_step_past_the_last_step_is_rejected():
    scheduler = PyramidFlowScheduler()
    scheduler.set_timesteps(1, 0)
    x = torch.zeros(1, 2, 1, 2, 2)
    x = scheduler.step(x, scheduler.timesteps[0], x)
    with pytest.raises(ValueError, match="next stage"):
        scheduler.step(x, scheduler.timesteps[0], x)


@pytest.mark.parametrize("bad", [0, 1, torch.tensor(1000), torch.tensor([744, 744])])
def test_integer_timesteps_are_rejected(bad):
    scheduler = PyramidFlowScheduler()
    scheduler.set_timesteps(2, 0)
    x = torch.zeros(1, 2, 1, 2, 2)
    with pytest.raises(ValueError, match="not an integer index"):
        scheduler.step(x, bad, x)


@pytest.mark.parametrize("bad", [0.386, 1000.0, 1.385])
def test_wrong_timestep_values_are_rejected(bad):
    # A sigma instead of a timestep, the first step again, the last step of another stage.
    scheduler = PyramidFlowScheduler()
    scheduler.set_timesteps(2, 1)
    scheduler.step(torch.zeros(1, 2, 1, 2, 2), scheduler.timesteps[0].item(), torch.zeros(1, 2, 1, 2, 2))
    with pytest.raises(ValueError, match="expected"):
        scheduler.step(torch.zeros(1, 2, 1, 2, 2), bad, torch.zeros(1, 2, 1, 2, 2))


def test_shape_mismatch_is_rejected():
    scheduler = PyramidFlowScheduler()
    scheduler.set_timesteps(2, 0)
    with pytest.raises(ValueError, match="does not match"):
        scheduler.step(torch.zeros(1, 2, 1, 2, 2), scheduler.timesteps[0], torch.zeros(1, 2, 1, 4, 4))


@pytest.mark.parametrize("steps, stage", [(0, 0), (-1, 0), (2.5, 0), (2, 3), (2, -1), (2, 1.5)])
def test_set_timesteps_rejects_bad_arguments(steps, stage):
    with pytest.raises(ValueError):
        PyramidFlowScheduler().set_timesteps(steps, stage)


def test_no_renoise_into_stage_zero():
    with pytest.raises(ValueError, match="stage 0"):
        PyramidFlowScheduler().renoise_coefficients(0)


@pytest.mark.parametrize("kwargs", [
    dict(gamma=0.5), dict(gamma=0.0), dict(stage_range=(0, 0.5, 0.4, 1)),
    dict(stage_range=(0.1, 1)), dict(shift=0.0), dict(num_train_timesteps=1),
])
def test_bad_configs_are_rejected(kwargs):
    with pytest.raises(ValueError):
        compute_stage_tables(**kwargs)


def test_stage_transition_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        stage_transition(torch.zeros(2, 2, 2), 1.0, 0.1, 1 / 3)
    with pytest.raises(ValueError, match="expected"):
        stage_transition(torch.zeros(1, 2, 1, 2, 2), 1.0, 0.1, 1 / 3, noise=torch.zeros(1, 2, 1, 2, 2))


# --------------------------------------------------------------------------------------
# Stage transition
# --------------------------------------------------------------------------------------

def test_upsample_is_nearest_2x():
    x = torch.arange(6.0).reshape(1, 1, 1, 2, 3)
    up = upsample_nearest_2x(x)
    assert up.shape == (1, 1, 1, 4, 6)
    torch.testing.assert_close(up, torch.nn.functional.interpolate(x[:, :, 0], scale_factor=2, mode="nearest")[:, :, None])


def test_stage_transition_with_injected_noise_is_the_formula():
    latents = torch.randn(1, 3, 2, 2, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 3, 2, 4, 8, generator=torch.Generator().manual_seed(1))
    out = stage_transition(latents, 0.7, 0.2, 1 / 3, noise=noise)
    _exact(out, 0.7 * upsample_nearest_2x(latents) + 0.2 * noise)


def test_stage_transition_draws_from_the_generator_in_fp32():
    latents = torch.randn(1, 2, 1, 4, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    a = stage_transition(latents, 0.7, 0.2, 1 / 3, generator=torch.Generator().manual_seed(5))
    b = stage_transition(latents, 0.7, 0.2, 1 / 3, generator=torch.Generator().manual_seed(5))
    assert a.dtype == torch.bfloat16 and a.shape == (1, 2, 1, 8, 8)
    _exact(a, b)
    noise = block_noise((1, 2, 1, 8, 8), 1 / 3, generator=torch.Generator().manual_seed(5))
    _exact(a, (0.7 * upsample_nearest_2x(latents.float()) + 0.2 * noise).to(torch.bfloat16))


def _recorded_runs() -> list[str]:
    """Sections that recorded every DiT call's input (the text-to-video runs)."""
    return [name for name in golden()["sections"] if f"{name}.call0.in.current" in golden()["tensors"]]


@pytest.mark.parametrize("name", _recorded_runs())
def test_denoising_chain_reproduces_golden_without_the_dit(name):
    """Replay a recorded text-to-video run with the recorded DiT outputs.

    Each unit starts from its recorded coarse noise; our scheduler steps and stage
    transitions with the recorded block noise must then give every recorded DiT input,
    timestep and the final latents bit for bit (elementwise IEEE arithmetic, the same on
    every machine). This is the sampler's arithmetic minus the DiT and the history. On the
    way, the noise is checked against ours: the recorded initial noise is ``torch.randn``
    of the recorded generator seed (to within its CPU kernel paths), our coarse noise is its
    downsample (to within fp32 rounding), and our block noise drawn from a generator seeded
    like the reference's global RNG matches within its derived bound.
    """
    meta = golden()
    run = section(name)
    args = run["call_args"]
    frame_per_unit = run["runner"]["effective"]["frame_per_unit"]
    scheduler = _scheduler_from_golden()

    raw = load_tensor(f"{name}.initial_latents")
    reference_draw = torch.randn(raw.shape, generator=torch.Generator().manual_seed(run["generator_seed"]))
    torch.testing.assert_close(reference_draw, raw, atol=TORCH_RANDN_ACROSS_CPUS, rtol=0)
    noise = coarsen_noise(raw, scheduler.num_stages)
    # the reference's fp32 bilinear vs our float64 sums: 2 stages x 3 adds x 2^-24 x 4 max|x|
    noise_tolerance = 24 * FP32_EPS * raw.abs().max().item()

    recorded_noise = load_nested(f"{name}.block_noise")
    block_generator = torch.Generator().manual_seed(run["global_seed_before_generate"])
    call = block = 0
    outputs = []
    num_units = 1 + (args["temp"] - 1) // frame_per_unit
    for unit in range(num_units):
        first = unit == 0
        frames = slice(0, 1) if first else slice(1 + (unit - 1) * frame_per_unit, 1 + unit * frame_per_unit)
        latents = load_tensor(f"{name}.call{call}.in.current").chunk(2)[0]    # the unit's coarse noise
        torch.testing.assert_close(noise[:, :, frames], latents, atol=noise_tolerance, rtol=0)
        steps = args["num_inference_steps"] if first else args["video_num_inference_steps"]
        scale = args["guidance_scale"] if first else args["video_guidance_scale"]
        for stage in range(scheduler.num_stages):
            scheduler.set_timesteps(steps[stage], stage)
            if stage > 0:
                alpha, beta = scheduler.renoise_coefficients(stage)
                recorded = recorded_noise[block]
                state = block_generator.get_state()
                drawn = block_noise(recorded.shape, scheduler.gamma, generator=block_generator)
                assert_block_noise_matches_reference(drawn, recorded, scheduler.gamma, state)
                latents = stage_transition(latents, alpha, beta, scheduler.gamma, noise=recorded)
                block += 1
            for t in scheduler.timesteps:
                model_input = torch.cat([latents] * 2)                 # CFG batch [neg, pos]
                _exact(model_input, load_tensor(f"{name}.call{call}.in.current"))
                _exact(t.expand(2).float(), load_tensor(f"{name}.call{call}.in.timestep_ratio"))
                uncond, text = load_tensor(f"{name}.call{call}.out").chunk(2)
                velocity = uncond + scale * (text - uncond)
                latents = scheduler.step(velocity, t.expand(2).float(), latents)
                call += 1
        outputs.append(latents)
    assert call == run["num_dit_calls"] and block == len(recorded_noise)
    _exact(torch.cat(outputs, dim=2), load_tensor(f"{name}.output_latents"))
