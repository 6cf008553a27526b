"""benchmarks/toy_quality.py's bookkeeping, without sampling: the rates of each check overall, on
held-out prompts and per shape, the model card's table with the VAE ceiling's row, and the settings
it compares."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import toy_quality  # noqa: E402

from pyramid_core.toy import checks, judge  # noqa: E402
from pyramid_core.toy.model import ToySettings  # noqa: E402

TRAINED = ("red", "square", "right", "black")
HELD_OUT = ("red", "triangle", "left", "gray")


def _verdict(ok: bool) -> judge.Verdict:
    return judge.Verdict(ok, [] if ok else ["made up"], {})


def test_rates_count_each_check_overall_on_held_out_prompts_and_per_shape():
    assert not checks.is_held_out(TRAINED) and checks.is_held_out(HELD_OUT)
    t2v = [(TRAINED, _verdict(True)), (TRAINED, _verdict(False)), (HELD_OUT, _verdict(True))]
    scenes = [checks.case_scene(TRAINED, 0), checks.case_scene(HELD_OUT, 0), checks.case_scene(HELD_OUT, 1)]
    i2v = [_verdict(True), _verdict(False), _verdict(True)]
    cont = [_verdict(False)] * 3
    rates = toy_quality.rates(t2v, scenes, i2v, cont, time.perf_counter())
    assert (rates["t2v"], rates["t2v_held_out"], rates["i2v"], rates["continue"]) == (0.667, 1.0, 0.667, 0.0)
    assert (rates["t2v_videos"], rates["t2v_held_out_videos"], rates["i2v_videos"]) == (3, 1, 3)
    assert rates["by_shape"] == {"t2v": {"square": 0.5, "triangle": 1.0}, "i2v": {"square": 1.0, "triangle": 0.5},
                                 "continue": {"square": 0.0, "triangle": 0.0}}
    assert rates["seconds_per_video"] >= 0


def test_the_table_shows_the_vae_ceiling_without_steps_or_history():
    common = {"t2v": 0.5, "t2v_held_out": 0.25, "i2v": 0.75, "continue": 1.0, "seconds_per_video": 1.5}
    rows = [{"dit": "fp32", "steps_per_stage": 10, "recent_units": 2, "history_frames": None, "video_guidance": 2.5,
             **common},
            {"dit": "none (VAE reconstructions)", "steps_per_stage": None, "recent_units": None,
             "history_frames": None, "video_guidance": None, **common}]
    table = toy_quality.markdown(rows).splitlines()
    assert table[2] == "| fp32 | 10 | 2 recent units, all frames | 2.5 | 0.500 (0.250) | 0.750 | 1.000 | 1.50 |"
    assert table[3] == "| none (VAE reconstructions) | -- | -- | -- | 0.500 (0.250) | 0.750 | 1.000 | 1.50 |"


def test_the_grid_varies_one_setting_at_a_time_from_the_defaults_at_the_largest_step_count():
    grid = toy_quality.settings_grid([1, 10], [4.0])
    default = ToySettings.video_guidance
    assert [tuple(toy_quality.label(settings).values()) for settings in grid] == [
        (1, 1, None, default), (10, 1, None, default), (10, 2, None, default), (10, 1, 1, default), (10, 1, None, 4.0)]
    for settings in grid:
        assert settings.steps == settings.video_steps and settings.guidance == ToySettings.guidance
