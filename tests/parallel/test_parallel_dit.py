"""Sequence and CFG parallelism give one process's DiT prediction (torchrun, gloo, CPU).

``dit_parity_worker.py`` runs every mode that fits the launch on random 12-head miniFLUX and
SD3 DiTs with history clips (frame-causal mask), padded text and a CFG batch. 3 ranks do not
divide the 56 image tokens, so the padding path runs too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyramid_core.parallel import ParallelPlan, check_heads, plan_parallel
from support import torchrun

WORKER = Path(__file__).resolve().parent / "dit_parity_worker.py"
IMAGE_TOKENS = 2 + 6 + 2 * 4 * 6        # the worker's history clips and noisy unit, in 2x2 patches
MODES = {2: ["sequence", "cfg"], 3: ["sequence"], 4: ["sequence", "cfg+sequence"]}


@pytest.mark.parametrize("ranks", sorted(MODES))
def test_parallel_modes_match_one_process(ranks, tmp_path):
    done = torchrun(ranks, str(WORKER), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(ranks):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert sorted(results) == sorted(f"{f}/{m}" for f in ("flux", "mmdit") for m in MODES[ranks])
        for case, r in results.items():
            assert r["shape"] == [2, 16, 2, 8, 12], case
            assert r["max_diff"] <= 1e-5 * r["scale"], (case, r)
            # the work really was split: batch rows for cfg, image tokens for sequence
            cfg = 2 if case.endswith("cfg") or "cfg+" in case else 1
            sequence = ranks // cfg if "sequence" in case else 1
            assert r["block_input"] == [[2 // cfg, -(-IMAGE_TOKENS // sequence)]], (case, r)


def test_plans_and_what_to_launch_instead():
    assert plan_parallel("none", 1, one_video=True) == ParallelPlan()
    assert plan_parallel("cfg", 2, one_video=True).group_size == 2
    assert plan_parallel("sequence", 4, one_video=True) == ParallelPlan("sequence", 1, 4)
    assert plan_parallel("cfg+sequence", 8, one_video=True) == ParallelPlan("cfg+sequence", 2, 4)
    assert plan_parallel("sequence", 8, 2, one_video=False, command="generate-batch").group_size == 2
    errors = [
        (dict(mode="cfg", world_size=1, one_video=True), "torchrun --nproc_per_node 2 -m pyramid_core generate"),
        (dict(mode="sequence", world_size=1, one_video=True), "at least 2 processes"),
        (dict(mode="cfg+sequence", world_size=2, one_video=True), "at least 4 processes"),
        (dict(mode="cfg", world_size=4, one_video=True), "use generate-batch"),
        (dict(mode="none", world_size=2, one_video=True), "add --parallel"),
        (dict(mode="sequence", world_size=6, sequence_size=4, one_video=False), "groups of 4"),
        (dict(mode="cfg", world_size=2, sequence_size=2, one_video=True), "--sequence-size needs"),
        (dict(mode="ring", world_size=2, one_video=True), "choose one of"),
    ]
    for kwargs, message in errors:
        with pytest.raises(ValueError, match=message):
            plan_parallel(**kwargs)


def test_heads_must_divide_over_the_ranks():
    check_heads(30, 6)
    with pytest.raises(ValueError, match="4 ranks do not divide 30; use 2 or 3 or 5 or 6 or 10 or 15 ranks"):
        check_heads(30, 4)
