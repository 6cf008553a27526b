"""Every API workflow in workflows/api runs on the real ComfyUI with tiny checkpoints.

The workflows name the files users have (see MODEL_FILES); the test writes tiny checkpoints
under those names, swaps the core DualCLIPLoader (which always builds a full-size T5-XXL)
for the tiny official text-encoder folder, shrinks sizes and steps, and checks the video
file that SaveVideo wrote (frame count and size, read back with PyAV), or the image that
SaveImage wrote for the text-to-image workflow.
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


def saved_image(server, entry) -> tuple[int, int]:
    """(width, height) of the one image a prompt saved."""
    from PIL import Image

    images = [f for f in output_files(entry) if f["type"] == "output" and f["filename"].endswith(".png")]
    assert len(images) == 1, output_files(entry)
    with Image.open(server.output_dir / images[0]["subfolder"] / images[0]["filename"]) as image:
        return image.size


def _makes_an_image(prompt: dict) -> bool:
    return any(node["class_type"] == "SaveImage" for node in prompt.values())


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_api_workflow_makes_its_video_or_image(tiny_comfyui, name):
    prompt = shrink(load_api_workflow(name))
    entry = tiny_comfyui.run(prompt, timeout=240)
    if _makes_an_image(prompt):
        assert video_length(prompt) == 1 and saved_image(tiny_comfyui, entry) == (WIDTH, HEIGHT)
    else:
        assert saved_video(tiny_comfyui, entry) == (video_length(prompt), WIDTH, HEIGHT)


def test_workflows_end_in_core_video_or_image_nodes():
    for path in WORKFLOWS.glob("*.json"):
        prompt = json.loads(path.read_text())
        kinds = {node["class_type"] for node in prompt.values()}
        assert {"SaveImage"} <= kinds if _makes_an_image(prompt) else {"CreateVideo", "SaveVideo"} <= kinds, path.name
        ui = path.parent.parent / path.name
        assert ui.is_file(), f"{path.name} has no UI-format twin in workflows/"


def test_the_text_to_image_workflow_follows_the_reference_notebook():
    """image_generation_demo.ipynb: the image checkpoint, 1024x1024, one frame, 20 steps per
    stage, guidance 9; and an image model asked for a video is refused with what to change."""
    prompt = load_api_workflow("pyramid_flow_t2i_1024p")
    nodes = {node["class_type"]: node["inputs"] for node in prompt.values()}
    assert nodes["PyramidFlowDiTLoader"]["dit_name"] == "pyramid-flow-miniflux/diffusion_transformer_image"
    assert (nodes["PyramidFlowEmptyLatent"]["width"], nodes["PyramidFlowEmptyLatent"]["height"],
            nodes["PyramidFlowEmptyLatent"]["length"]) == (1024, 1024, 1)
    sampler = nodes["PyramidFlowSampler"]
    assert [sampler[f"first_frame_steps_stage{k}"] for k in (1, 2, 3)] == [20, 20, 20]
    assert sampler["guidance_scale"] == 9.0


def test_an_image_model_asked_for_a_video_says_what_to_change(tiny_comfyui):
    prompt = shrink(load_api_workflow("pyramid_flow_t2i_1024p"), seed=5)
    prompt["5"]["inputs"]["length"] = 9
    entry = tiny_comfyui.wait(tiny_comfyui.submit(prompt), timeout=120)
    errors = [m[1]["exception_message"] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and "makes single images: set the Empty Latent's length to 1" in errors[0], errors


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_every_setting_follows_the_reference_for_its_model(name):
    """Sizes, steps and guidance of a shipped workflow are the variants table's for the DiT
    it loads (pyramid_core.variants, which cites the reference for each); image-to-video has
    the README's video guidance 4."""
    from pyramid_core.variants import IMAGE_TO_VIDEO_GUIDANCE, detect_variant

    prompt = load_api_workflow(name)
    nodes = [(node["class_type"], node["inputs"]) for node in prompt.values()]
    loader = next(inputs for kind, inputs in nodes if kind == "PyramidFlowDiTLoader")
    variant = detect_variant("flux", loader["dit_name"])
    image_to_video = any(kind == "LoadImage" for kind, _ in nodes)
    for kind, inputs in nodes:
        if kind == "PyramidFlowEmptyLatent":
            assert (inputs["width"], inputs["height"]) == (variant.width, variant.height)
            assert inputs["length"] <= 1 + 8 * (variant.max_latent_frames - 1)
        elif kind == "PyramidFlowSampler":
            assert [inputs[f"first_frame_steps_stage{k}"] for k in (1, 2, 3)] == list(variant.steps)
            assert [inputs[f"video_steps_stage{k}"] for k in (1, 2, 3)] == list(variant.video_steps)
            assert inputs["guidance_scale"] == variant.guidance_scale
            video_guidance = IMAGE_TO_VIDEO_GUIDANCE if image_to_video else variant.video_guidance_scale
            assert inputs["video_guidance_scale"] == video_guidance
        elif kind == "PyramidFlowStageSampler":
            assert inputs["steps"] in variant.steps and inputs["guidance_scale"] == variant.guidance_scale
