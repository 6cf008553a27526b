"""The training objective against recorded reference training steps (tests/data/golden).

Driven by golden.json: every section with a recorded training ``loss`` and
``use_temporal_pyramid`` (``<family>.train_*``) names its runner settings, the seeds of its
inputs and of the global RNG before the call, and stores the DiT's inputs and the targets.
The objective, fed the same clean latents and text and a generator seeded like the
reference's global RNG, must rebuild those inputs and targets, and the tiny DiT's loss on
them must match the recorded loss.
"""

from __future__ import annotations

import pytest
import torch

import pyramid_core.models as models
from golden_utils import golden, has_tensor, load_config, load_nested, load_tensor, load_weights, section
from reference_tolerances import TORCH_RANDN_ACROSS_CPUS
from pyramid_core.latents import normalize_latents
from pyramid_core.scheduling import PyramidFlowScheduler
from pyramid_core.training.dit_objective import (PyramidObjective, TextBatch, build_training_batch,
                                                 flow_matching_loss)
from pyramid_core.variants import VARIANTS

ATOL = 1e-4
# The reference's runner counts its calls and increments the counter before choosing the
# history lengths, so the first call of a fresh runner (what every section records) is step 1.
FIRST_REFERENCE_STEP = 1


def _training_sections() -> list[str]:
    return [name for name, sec in golden()["sections"].items()
            if "use_temporal_pyramid" in sec and "loss" in sec and has_tensor(name + ".targets.0")]


def _tiny_dit(family: str) -> torch.nn.Module:
    spec = next(s for k, s in section("weights").items() if isinstance(s, dict) and k == f"{family}_tiny")
    model = getattr(models, spec["class"]).from_config(load_config(spec["config_file"]))
    model.load_state_dict(load_weights(spec["weights_file"]), strict=True)
    return model.eval()


def _text_from_recipe(recipe: dict) -> TextBatch:
    """Text features made as the section's ``how`` says (seeded randn, mask of ``valid_len``)."""
    g = torch.Generator().manual_seed(recipe["generator_seed"])
    embeds = torch.randn(recipe["batch"], recipe["text_len"], recipe["joint_attention_dim"], generator=g)
    pooled = torch.randn(recipe["batch"], recipe["pooled_projection_dim"], generator=g)
    mask = torch.zeros(recipe["batch"], recipe["text_len"], dtype=torch.int64)
    for row, valid in enumerate(recipe["valid_len"]):
        mask[row, :valid] = 1
    return TextBatch(embeds, mask, pooled)


def _objective_and_scheduler(sec: dict) -> tuple[PyramidObjective, PyramidFlowScheduler]:
    eff = sec["runner"]["effective"]
    objective = PyramidObjective(
        sample_ratios=tuple(eff["sample_ratios"]),
        temporal_pyramid=sec["use_temporal_pyramid"],
        frame_per_unit=eff["frame_per_unit"],
        max_latent_frames=eff["max_temporal_length"],
        corrupt_ratio=eff["corrupt_ratio"],
        cfg_rate=eff["cfg_rate"],
        video_sync_group=eff["video_sync_group"],
    )
    sched = eff["scheduler_config"]
    scheduler = PyramidFlowScheduler(sched["num_train_timesteps"], sched["shift"], sched["stage_range"], sched["gamma"])
    assert scheduler.num_stages == sched["stages"]
    return objective, scheduler


def _rebuild(name: str):
    sec = section(name)
    family = name.split(".")[0]
    objective, scheduler = _objective_and_scheduler(sec)
    variant = next(v for v in VARIANTS.values() if v.family == family)
    latents = normalize_latents(load_tensor(name + ".video_latents_raw"), variant)
    text = TextBatch(load_tensor(name + ".text_in.prompt_embeds"), load_tensor(name + ".text_in.attention_mask"),
                     load_tensor(name + ".text_in.pooled"))
    generator = torch.Generator().manual_seed(sec["global_seed_before_call"])
    batch = build_training_batch(latents, text, objective, scheduler, null_text=_text_from_recipe(sec["null_text"]),
                                 generator=generator, step=FIRST_REFERENCE_STEP)
    return sec, family, batch


def _max_err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("name", _training_sections())
def test_inputs_and_targets_match_the_reference(name):
    sec, _, batch = _rebuild(name)
    assert batch.stages == sec["column_to_stage"]
    assert torch.nonzero(batch.dropped).flatten().tolist() == sec["cfg_dropped_rows"]
    recorded = load_nested(name + ".in.sample")
    assert [[list(c.shape) for c in clips] for clips in batch.sample] == sec["sample_structure"]
    for clips, expected in zip(batch.sample, recorded):
        for clip, want in zip(clips, expected):  # history (clean + corruption) and the noisy clip
            assert _max_err(clip, want) <= ATOL
    assert _max_err(batch.timesteps, load_tensor(name + ".in.timestep_ratio")) <= 1e-3  # 0..1000 scale
    assert batch.timesteps.tolist() == pytest.approx(sec["timestep_ratio"], abs=1e-3)
    # Dropped rows hold the recipe's torch.randn null text, whose bits depend on the CPU.
    for key, got in zip(("encoder_hidden_states", "encoder_attention_mask", "pooled_projections"), batch.text):
        assert _max_err(got, load_tensor(f"{name}.in.{key}")) <= TORCH_RANDN_ACROSS_CPUS
    for got, want in zip(batch.targets, load_nested(name + ".targets"), strict=True):
        assert got.shape == want.shape
        assert _max_err(got, want) <= ATOL


@pytest.mark.parametrize("name", _training_sections())
def test_loss_matches_the_reference(name):
    sec, family, batch = _rebuild(name)
    with torch.no_grad():
        predictions = _tiny_dit(family)(**batch.dit_kwargs())
    loss = flow_matching_loss(predictions, batch.targets)
    assert abs(loss.item() - sec["loss"]) <= ATOL
