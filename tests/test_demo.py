"""The demo's bookkeeping: every workflow runs even when one fails, a table ends the run, and
the exit code says whether all succeeded. A stand-in server replaces ComfyUI here; the real
path through ComfyUI is what tests/comfyui/test_workflows.py runs."""

from __future__ import annotations

import demo
from comfyui_harness import ComfyUIError


class FakeServer:
    """Runs 'prompts' instantly: writes one mp4 per prompt, fails for the i2v workflow."""

    def __init__(self, base, extra_args=()):
        self.extra_args = extra_args
        self.base = base
        self.output_dir = base / "output"
        self.models_dir = base / "models"
        self.input_dir = base / "input"
        self.url = "http://fake"
        self.count = 0

    def __enter__(self):
        for folder in (self.output_dir, self.models_dir, self.input_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc):
        return None

    def run(self, prompt, timeout):
        if any(node["class_type"] == "LoadImage" for node in prompt.values()):
            raise ComfyUIError("prompt failed: a stand-in failure\nmore lines")
        self.count += 1
        name = f"video_{self.count}.mp4"
        (self.output_dir / name).write_bytes(b"mp4")
        return {"outputs": {"22": {"images": [{"filename": name, "subfolder": "", "type": "output"}]}}}

    def log_tail(self, lines):
        return "log"


def test_every_workflow_runs_and_a_failure_shows_in_the_table_and_exit_code(tmp_path, monkeypatch, capsys):
    servers = []

    def make_server(extra_args=()):
        servers.append(FakeServer(tmp_path / "server", extra_args))
        return servers[-1]

    monkeypatch.setattr(demo, "ComfyUIServer", make_server)
    monkeypatch.setattr(demo.tiny_checkpoints, "write_stand_ins", lambda models, inputs, toy=False: None)
    monkeypatch.setattr(demo, "verdict_text", lambda name, output, rates: "shows it")
    code = demo.main(["--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    table = out[out.index("workflow  "):]
    assert code == 1
    assert servers[0].extra_args == ("--preview-method", "auto")
    rows = [line.split()[:2] for line in table.splitlines()[1:] if line.strip() and " workflows failed" not in line]
    assert {name for name, _ in rows} == {"continue_384p", "i2v_384p", "t2i_1024p", "t2v_384p", "t2v_768p",
                                          "t2v_per_stage"}
    assert dict(rows)["i2v_384p"] == "FAILED" and list(dict(rows).values()).count("ok") == 5
    assert "a stand-in failure" in table and "more lines" not in table
    assert "1 of 6 workflows failed: i2v_384p" in out
    assert table.count("toy model's checks: shows it") == 5
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 5


def test_all_ok_exits_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "ComfyUIServer", lambda extra_args=(): FakeServer(tmp_path / "server", extra_args))
    monkeypatch.setattr(demo.tiny_checkpoints, "write_stand_ins", lambda models, inputs, toy=False: None)
    assert demo.main(["t2v_384p", "--out", str(tmp_path / "out"), "--random-stand-ins"]) == 0


def test_a_toy_video_is_judged_beside_the_models_rate(tmp_path):
    """The verdict the demo prints for a toy video: the library's check of its workflow's case,
    and the model's success rate for that check (quality.json)."""
    import numpy as np

    from pyramid_core.toy import world
    from pyramid_core.training.synthetic import write_video

    color, shape, direction, background = demo.tiny_checkpoints.TOY_CASES["pyramid_flow_t2v_384p"]
    rng = np.random.default_rng(0)
    write_video(tmp_path / "right.mp4", world.render(world.random_scene(rng, color, shape, direction, background)), 24)
    other = next(s for s in world.SHAPES if s != shape)
    write_video(tmp_path / "wrong.mp4", world.render(world.random_scene(rng, color, other, direction, background)), 24)
    rates = {"t2v": 0.84, "i2v": 0.7}
    assert demo.verdict_text("t2v_384p", tmp_path / "right.mp4", rates) == \
        "shows it; the model's text-to-video rate: 84%"
    assert demo.verdict_text("t2v_384p", tmp_path / "wrong.mp4", {}) == \
        f"misses it (most frames show a {other}, asked for a {shape})"


def test_a_thumbnail_is_the_middle_frame_256_px_wide(tmp_path):
    import numpy as np
    from PIL import Image

    from pyramid_core.training.synthetic import write_video

    frames = np.zeros((9, 64, 128, 3), np.uint8)
    frames[4] = (200, 30, 30)                                  # only the middle frame is red
    write_video(tmp_path / "clip.mp4", frames, 24)
    demo.write_thumbnail(tmp_path / "clip.mp4", tmp_path / "thumb.jpg")
    with Image.open(tmp_path / "thumb.jpg") as image:
        assert image.size == (256, 128)
        red, green, _ = np.asarray(image.convert("RGB"), np.float32).mean(axis=(0, 1))
    assert red > 150 and green < 80
