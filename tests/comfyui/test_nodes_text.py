"""In-process checks of the node adapters that need ComfyUI objects but no server.

* Text from a ComfyUI ``CLIP`` (flux layout) equals the official encoder's output on the same
  weights: 128 masked T5 tokens and CLIP-L's pooled vector; the shared CLIP keeps its settings.
* The step preview is an RGB picture of the latent.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
COMFYUI_DIR = REPO_ROOT / ".cache" / "comfyui" / "ComfyUI"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_models, next to this file

PROMPTS = ["a cat runs", "the red space man jumps over a blue sea , movie trailer"]


@pytest.fixture(scope="module")
def pack():
    """ComfyUI importable in this process (CPU), and this pack imported as ComfyUI imports it."""
    if not (COMFYUI_DIR / "comfy").is_dir():
        pytest.skip("no ComfyUI in .cache: bash scripts/comfyui_env.sh setup")
    sys.path.insert(0, str(COMFYUI_DIR))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    spec = importlib.util.spec_from_file_location("pyramid_flow_pack", REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _options(clip) -> list:
    model = clip.cond_stage_model
    return [(sub.layer, sub.layer_idx, sub.return_projected_pooled, sub.enable_attention_masks,
             sub.return_attention_masks) for sub in (model.clip_l, model.t5xxl)]


def test_core_clip_gives_the_official_encoders_embeddings_and_stays_unchanged(pack):
    from tiny_models import build_tiny_comfy_clip
    from pyramid_core.models.text_encoders import PyramidTextEncoder

    conditioning = sys.modules["pyramid_flow_pack.nodes.conditioning"]
    clip, ((clip_tok, clip_model), (t5_tok, t5_model)) = build_tiny_comfy_clip()
    shared = clip.clone()
    shared.clip_layer(-1)                       # another node's setting on a clone of the same CLIP
    before = _options(shared)

    got = conditioning.ComfyClipPromptEncoder(shared).encode_prompt(PROMPTS)
    expected = PyramidTextEncoder([clip_tok], [clip_model], t5_tok, t5_model).encode_prompt(PROMPTS)

    assert got.prompt_embeds.shape == (2, 128, 32) and got.pooled.shape == (2, 16)
    assert torch.equal(got.attention_mask, expected.attention_mask)
    torch.testing.assert_close(got.prompt_embeds, expected.prompt_embeds, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.pooled, expected.pooled, rtol=1e-4, atol=1e-5)
    assert _options(shared) == before and _options(clip) == before

    node = conditioning.PyramidFlowTextEncode
    text = node.execute(prompt="a cat runs", negative_prompt="", prompt_suffix=" , movie trailer",
                        clip=shared).result[0]
    suffixed = PyramidTextEncoder([clip_tok], [clip_model], t5_tok, t5_model).encode_prompt(
        ["a cat runs , movie trailer"])
    torch.testing.assert_close(text.positive.prompt_embeds, suffixed.prompt_embeds, rtol=1e-4, atol=1e-5)
    assert text.negative.attention_mask.sum() == 1          # "" is just the end token
    with pytest.raises(ValueError, match="exactly one of clip"):
        node.execute(prompt="a", negative_prompt="", prompt_suffix="")


def test_step_preview_is_a_picture_of_the_latent(pack):
    from pyramid_core.preview import latent_preview_rgb
    from pyramid_core.variants import VARIANTS

    runtime = sys.modules["pyramid_flow_pack.nodes._runtime"]
    latents = torch.randn(1, 16, 2, 8, 16)
    image = runtime.latent_preview_image(latents, VARIANTS["miniflux-384p"], first_frame=False)
    assert image.size == (16, 8) and image.mode == "RGB"
    expected = latent_preview_rgb(latents[0, :, -1], VARIANTS["miniflux-384p"], False).mul(255).to(torch.uint8)
    assert torch.equal(torch.tensor(np.array(image)), expected)


def test_step_preview_is_sent_at_the_size_of_the_video(pack, monkeypatch):
    """The page labels a preview with its size: a 128x64 video's preview is 128x64 at every
    pyramid stage (its latents 4x2, 8x4, 16x8), sent with no max size (ComfyUI would scale it to 512)."""
    import comfy.utils
    from pyramid_core.sampling.progress import StepInfo
    from pyramid_core.variants import VARIANTS

    runtime = sys.modules["pyramid_flow_pack.nodes._runtime"]
    sent = []
    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute",
                        lambda self, value, total=None, preview=None: sent.append(preview))
    monkeypatch.setattr(runtime, "_previews_enabled", lambda: True)
    dit = runtime.ModelHandle(patcher=None, variant=VARIANTS["miniflux-384p"])
    report = runtime.step_callback(3, dit, start_frame=1)
    for stage, (h, w) in enumerate([(2, 4), (4, 8), (8, 16)]):
        report(StepInfo(step=stage + 1, total_steps=3, latents=torch.randn(1, 16, 2, h, w), stage_index=stage))
    assert [(kind, image.size, max_size) for kind, image, max_size in sent] == [("JPEG", (128, 64), None)] * 3
