"""The harness itself: ComfyUI starts with this pack, runs prompts, and always stops."""

from __future__ import annotations

import os
import socket
import time

import pytest

import comfyui_harness
from comfyui_harness import ComfyUIError, ComfyUIServer, output_files

PACK_NODES = [
    "PyramidFlowDiTLoader", "PyramidFlowVAELoader", "PyramidFlowTextEncoderLoader", "PyramidFlowLoraLoader",
    "PyramidFlowTextEncode", "PyramidFlowPromptSchedule", "PyramidFlowGuidanceSchedule", "PyramidFlowEmptyLatent", "PyramidFlowSampler", "PyramidFlowStageSampler",
    "PyramidFlowStageTransition", "PyramidFlowUnitSampler", "PyramidFlowHistory", "PyramidFlowVAEEncode",
    "PyramidFlowVAEDecode",
]


def test_pack_imports_without_error(comfyui):
    log = comfyui.log_text()
    assert "custom_nodes/pyramid-flow" in log, "ComfyUI did not list the pack among its custom nodes"
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and "pyramid-flow" in line]
    assert not failed, failed
    info = comfyui.object_info()
    ours = sorted(name for name, node in info.items() if node["python_module"].startswith("custom_nodes.pyramid-flow"))
    assert ours == sorted(PACK_NODES)
    for node in PACK_NODES:  # every input explains itself in the UI
        for group in ("required", "optional"):
            for name, spec in info[node]["input"].get(group, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node}.{name} has no tooltip"


def test_core_prompt_saves_an_image(comfyui):
    # A unique colour per run: identical prompts are served from ComfyUI's cache.
    colour = int(time.time() * 1000) % 0xFFFFFF
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": colour}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness"}},
    }
    entry = comfyui.run(prompt, timeout=120)
    files = [f for f in output_files(entry) if f["type"] == "output"]
    assert len(files) == 1
    png = comfyui.view(files[0]["filename"], files[0]["subfolder"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (comfyui.output_dir / files[0]["subfolder"] / files[0]["filename"]).is_file()


def test_pack_node_runs_in_a_prompt(comfyui):
    prompt = {
        "1": {"class_type": "PyramidFlowEmptyLatent",
              "inputs": {"width": 128, "height": 64, "length": 17, "seconds": 0.0, "batch_size": 2}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    entry = comfyui.run(prompt, timeout=120)
    assert entry["status"]["status_str"] == "success"


def test_bad_input_reaches_the_user(comfyui):
    prompt = {
        "1": {"class_type": "PyramidFlowEmptyLatent",
              "inputs": {"width": 100, "height": 64, "length": 17, "seconds": 0.0, "batch_size": 1}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    entry = comfyui.wait(comfyui.submit(prompt), timeout=120)
    assert entry["status"]["status_str"] == "error"
    errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert "multiple of 64" in errors[0][1]["exception_message"]


def test_interrupt_when_idle_is_harmless(comfyui):
    comfyui.interrupt()
    assert comfyui.get_json("/queue")["queue_running"] == []


def test_missing_comfyui_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_DIR", str(tmp_path))
    with pytest.raises(ComfyUIError, match="comfyui_env.sh setup"):
        ComfyUIServer()


def test_server_that_cannot_start_fails_fast_with_its_log(tmp_path):
    server = ComfyUIServer(tmp_path, extra_args=("--no-such-option",), startup_timeout=60)
    started = time.monotonic()
    with pytest.raises(ComfyUIError, match="exited with code") as err:
        server.start(attempts=1)
    assert "--no-such-option" in str(err.value)  # the log excerpt says why
    assert time.monotonic() - started < 60
    assert server.process is None


def test_port_in_use_is_retried_and_server_always_stops(tmp_path, monkeypatch):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    ports = iter([busy.getsockname()[1]])
    real_free_port = comfyui_harness.free_port
    monkeypatch.setattr(comfyui_harness, "free_port", lambda: next(ports, None) or real_free_port())
    server = ComfyUIServer(tmp_path)
    try:
        server.start()
        assert server.port != busy.getsockname()[1]
        assert "address already in use" in server.log_text().lower()
        pid = server.process.pid
    finally:
        server.stop()
        busy.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_template_browser_lists_the_pack_workflows(comfyui):
    from support import REPO_ROOT

    listed = comfyui.get_json("/workflow_templates").get("pyramid-flow", [])
    assert sorted(listed) == sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))
    first = sorted(listed)[0]
    assert b'"nodes"' in comfyui.get_bytes(f"/api/workflow_templates/pyramid-flow/{first}.json")
