"""The shipped workflows on the real ComfyUI with the toy model -- what the README's main command
(``scripts/demo.py``) runs -- make what their prompts ask for, judged from the pixels that
SaveVideo / SaveImage wrote, with the same measures as the library's checks
(:mod:`pyramid_core.toy.checks`, ``tiny_checkpoints.judge_toy_output``): the prompted colour and
shape moving the prompted way, frame 0 being the input image, the motion carried across a
continuation's seam, the prompted colour and shape in an image. Each workflow asks for its
case of ``tiny_checkpoints.TOY_CASES`` (this test is about the graphs; the library's quality tests,
tests/toy/test_toy_model.py, judge the model over every kind of prompt) over six seeds and must
pass the stated number of them; the random stand-ins pass none
(``tests/toy/test_train_toy_model.py::test_every_check_fails_on_random_weights``).
"""

from __future__ import annotations

import pytest

from comfyui_harness import output_files
from pyramid_core.toy import world
from tiny_checkpoints import TOY_CASES, judge_toy_output, load_api_workflow, read_saved, shrink

SEEDS = tuple(range(6))
# Passes required of the len(SEEDS) runs, about half of what the committed model gave (in
# brackets): a margin for another CPU's rounding; the random stand-ins pass none.
MIN_PASSED = {
    "pyramid_flow_t2v_384p": 3,        # (6)
    "pyramid_flow_t2v_768p": 3,        # (6)
    "pyramid_flow_t2v_per_stage": 3,   # (6)
    "pyramid_flow_i2v_384p": 3,        # (6)
    "pyramid_flow_continue_384p": 3,   # (6)
    "pyramid_flow_t2i_1024p": 3,       # (6)
}


@pytest.mark.parametrize("name", sorted(TOY_CASES))
def test_the_workflow_on_the_toy_model_makes_what_its_prompt_asks(toy_comfyui, name):
    verdicts = []
    for seed in SEEDS:
        entry = toy_comfyui.run(shrink(load_api_workflow(name), seed=seed, toy=name), timeout=300)
        files = [f for f in output_files(entry) if f["type"] == "output"]
        assert len(files) == 1, output_files(entry)
        frames = read_saved(toy_comfyui.output_dir / files[0]["subfolder"] / files[0]["filename"])
        assert frames.shape[1:] == (world.HEIGHT, world.WIDTH, 3)
        verdicts.append(judge_toy_output(name, frames))
    report = "\n".join(f"seed {s}: {'ok' if v.ok else v.reasons} {v.measures}" for s, v in zip(SEEDS, verdicts))
    assert sum(v.ok for v in verdicts) >= MIN_PASSED[name], report
