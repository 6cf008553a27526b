"""benchmarks/vs_reference.py without the reference: its options and the stand-ins that let
the reference import on a stack without IPython / tensorboardX (the GPU image's)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vs_reference  # noqa: E402


def test_without_a_reference_it_says_how_to_get_one(capsys):
    assert vs_reference.main([]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] is True


def test_missing_debug_modules_get_importable_stand_ins(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("IPython", "tensorboardX") else real(name, *a))
    for name in ("IPython", "tensorboardX"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    vs_reference._stand_in_for_debug_modules()
    try:
        from IPython import embed
        from tensorboardX import SummaryWriter

        SummaryWriter("logs").add_scalar("loss", 1.0)     # what the reference's trainer calls
        embed()
        assert sys.modules["tensorboardX"].__spec__.name == "tensorboardX"   # accelerate's probe
    finally:
        for name in ("IPython", "tensorboardX"):
            if getattr(sys.modules.get(name), "__spec__", None) is not None and sys.modules[name].__spec__.origin is None:
                del sys.modules[name]


def test_the_default_cases_follow_the_device():
    assert "t2v-full-384p" in vs_reference.GPU_CASES and "t2v-full-384p" not in vs_reference.CPU_CASES
    assert set(vs_reference.GPU_CASES) <= set(vs_reference.CASES)
