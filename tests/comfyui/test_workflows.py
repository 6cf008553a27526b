"""Every API workflow in workflows/api runs on the real ComfyUI with tiny checkpoints.

The workflows name the files users have (see MODEL_FILES); the test writes tiny checkpoints
under those names, swaps the core DualCLIPLoader (which always builds a full-size T5-XXL)
for the tiny official text-encoder folder, shrinks sizes and steps, and checks the video
file that SaveVideo wrote: frame count and size, read back with PyAV.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from comfyui_harness import output_files

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_models, next to this file
from tiny_models import HEIGHT, WIDTH, WORKFLOWS, load_api_workflow, shrink, video_length  # noqa: E402,F401

av = pytest.importorskip("av")


def saved_video(server, entry) -> tuple[int, int, int]:
    """(frames, width, height) of the one video a prompt saved."""
    videos = [f for f in output_files(entry) if f["type"] == "output" and f["filename"].endswith((".mp4", ".webm"))]
    assert len(videos) == 1, output_files(entry)
    path = server.output_dir / videos[0]["subfolder"] / videos[0]["filename"]
    with av.open(str(path)) as container:
        frames = [frame for frame in container.decode(video=0)]
    return len(frames), frames[0].width, frames[0].height


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_api_workflow_makes_a_video(tiny_comfyui, name):
    prompt = shrink(load_api_workflow(name))
    entry = tiny_comfyui.run(prompt, timeout=240)
    assert saved_video(tiny_comfyui, entry) == (video_length(prompt), WIDTH, HEIGHT)


def test_workflows_end_in_core_video_nodes():
    for path in WORKFLOWS.glob("*.json"):
        kinds = {node["class_type"] for node in json.loads(path.read_text()).values()}
        assert {"CreateVideo", "SaveVideo"} <= kinds, path.name
        ui = path.parent.parent / path.name
        assert ui.is_file(), f"{path.name} has no UI-format twin in workflows/"
