"""Guidance and prompts over time through the nodes, on the real ComfyUI: a Video Sampler with
a schedule makes the video of Unit Samplers given each unit's scale or prompt by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_models and the sampling tests' helpers
from test_nodes_sampling import _error, _run_to_latent  # noqa: E402
from tiny_models import load_api_workflow, shrink  # noqa: E402

SEED = 21


def _base(frames: int = 17) -> dict:
    """The shrunk t2v workflow (tiny text encoders, 128x64) at ``frames`` frames."""
    prompt = shrink(load_api_workflow("pyramid_flow_t2v_384p"), seed=SEED)
    prompt["5"]["inputs"]["length"] = frames
    return prompt


def _by_units(prompt: dict, scales: list[float], texts: list[str]) -> dict:
    """Units by hand: Unit Sampler -> History -> Unit Sampler ... with the given scale and text node."""
    sampler = prompt["10"]["inputs"]
    first, video = ([sampler[f"{kind}_steps_stage{k}"] for k in (1, 2, 3)] for kind in ("first_frame", "video"))
    previous = None
    for unit, (scale, text) in enumerate(zip(scales, texts)):
        steps = first if unit == 0 else video
        node = {"class_type": "PyramidFlowUnitSampler", "inputs": {
            "dit": ["2", 0], "conditioning": [text, 0], "latent": ["5", 0], "guidance_scale": scale, "seed": SEED,
            **{f"steps_stage{k}": steps[k - 1] for k in (1, 2, 3)}}}
        if previous is not None:
            prompt[f"8{unit}"] = {"class_type": "PyramidFlowHistory",
                                  "inputs": {"samples": [previous, 0], "recent_units": 1, "max_frames": 0}}
            node["inputs"]["history"] = [f"8{unit}", 0]
        prompt[f"7{unit}"] = node
        previous = f"7{unit}"
    del prompt["10"]
    return prompt, previous


def test_linear_guidance_node_gives_the_reference_scale_to_every_unit(tiny_comfyui):
    scheduled = _base()
    scheduled["60"] = {"class_type": "PyramidFlowGuidanceSchedule", "inputs": {
        "mode": "linear decay", "guidance_scale": 7.0, "alpha": 0.5, "min_guidance_scale": 2.0, "by_time": "0: 7"}}
    scheduled["10"]["inputs"]["guidance_schedule"] = ["60", 0]
    video = _run_to_latent(tiny_comfyui, scheduled, "10")
    by_hand, last = _by_units(_base(), [7.0, 6.5, 6.0], ["4", "4", "4"])      # max(7 - 0.5 u, 2) for u = 0, 1, 2
    torch.testing.assert_close(_run_to_latent(tiny_comfyui, by_hand, last), video, rtol=1e-5, atol=1e-5)
    plain = _run_to_latent(tiny_comfyui, _base(), "10")
    assert not torch.allclose(plain, video, atol=1e-4)               # without the schedule: other scales


def test_prompt_schedule_node_conditions_each_unit_on_its_prompt(tiny_comfyui):
    schedule = "0s: a red cat runs\n0.3s: a blue dog jumps"              # units start at 0, 1/24 and 0.375 s
    scheduled = _base()
    scheduled["4"] = {"class_type": "PyramidFlowPromptSchedule", "inputs": {
        "schedule": schedule, "negative_prompt": "", "prompt_suffix": "", "text_encoder": ["1", 0]}}
    video = _run_to_latent(tiny_comfyui, scheduled, "10")

    by_hand, last = _by_units(_base(), [7.0, 5.0, 5.0], ["61", "61", "62"])
    for node, text in (("61", "a red cat runs"), ("62", "a blue dog jumps")):
        by_hand[node] = {"class_type": "PyramidFlowTextEncode", "inputs": {
            "prompt": text, "negative_prompt": "", "prompt_suffix": "", "text_encoder": ["1", 0]}}
    by_hand["70"]["inputs"]["guidance_scale"] = _base()["10"]["inputs"]["guidance_scale"]
    torch.testing.assert_close(_run_to_latent(tiny_comfyui, by_hand, last), video, rtol=1e-5, atol=1e-5)


def test_bad_schedules_are_refused_with_the_line_that_is_wrong(tiny_comfyui):
    prompt = _base(9)
    prompt["4"] = {"class_type": "PyramidFlowPromptSchedule", "inputs": {
        "schedule": "0s: a red cat\n2s: a blue dog", "negative_prompt": "", "prompt_suffix": "",
        "text_encoder": ["1", 0]}}
    message = _error(tiny_comfyui.wait(tiny_comfyui.submit(prompt), timeout=120))
    assert "prompt schedule, line 2 (2s: a blue dog) starts after the video's end: 9 frames last 0.333s" in message
    prompt["4"]["inputs"]["schedule"] = "0s: a red cat\n0.2s: a blue dog\n0.1s: the sky"
    message = _error(tiny_comfyui.wait(tiny_comfyui.submit(prompt), timeout=120))
    assert "line 3 '0.1s: the sky': times must rise" in message
