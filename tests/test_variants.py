"""Every released checkpoint and the community single files get their variant, and say why."""

from __future__ import annotations

import pytest

from pyramid_core.variants import VARIANTS, choose_variant, detect_variant, get_variant

# (tensor family, name as users have it, expected variant)
RELEASED = [
    ("flux", "pyramid-flow-miniflux/diffusion_transformer_384p", "miniflux-384p"),
    ("flux", "pyramid-flow-miniflux/diffusion_transformer_768p", "miniflux-768p"),
    ("flux", "pyramid-flow-miniflux/diffusion_transformer_image", "miniflux-image"),
    ("mmdit", "pyramid-flow-sd3/diffusion_transformer_384p", "sd3-384p"),
    ("mmdit", "pyramid-flow-sd3/diffusion_transformer_768p", "sd3-768p"),
    # a file inside an official folder: the folder says it
    ("flux", "pyramid-flow-miniflux/diffusion_transformer_768p/diffusion_pytorch_model.safetensors", "miniflux-768p"),
]
COMMUNITY = [   # the older wrapper's files (huggingface.co/Kijai/pyramid-flow-comfy) and this README's names
    ("flux", "pyramid_flow_miniflux_bf16_v2.safetensors", "miniflux-384p"),
    ("flux", "pyramid_flow_miniflux_bf16_v1.safetensors", "miniflux-384p"),
    ("flux", "pyramid_flow_miniflux_fp8_e4m3fn_v2.safetensors", "miniflux-384p"),
    ("flux", "pyramid_flow_miniflux_768_bf16.safetensors", "miniflux-768p"),
    ("flux", "pyramid_flow_miniflux_768_fp8_e4m3fn.safetensors", "miniflux-768p"),
    ("flux", "pyramid_flow_miniflux_384p.safetensors", "miniflux-384p"),
    ("flux", "pyramid_flow_miniflux_768p.safetensors", "miniflux-768p"),
    ("flux", "pyramid_flow_miniflux_image.safetensors", "miniflux-image"),
    ("flux", "pyramid_flow_miniflux_1024p.safetensors", "miniflux-image"),
    ("flux", "my_image2video_finetune_384p.safetensors", "miniflux-384p"),   # a resolution beats "image"
    ("flux", "my_finetune.safetensors", "miniflux-384p"),
    ("mmdit", "pyramid_flow_sd3_384p.safetensors", "sd3-384p"),
    ("mmdit", "anything.safetensors", "sd3-768p"),
]


@pytest.mark.parametrize("family, name, expected", RELEASED + COMMUNITY)
def test_every_released_and_community_name_gets_its_variant(family, name, expected):
    variant, why = choose_variant(family, name)
    assert variant.name == expected and detect_variant(family, name) is variant
    assert why.startswith(f"{expected}: the tensors are {family}; the name ")


def test_the_reason_says_what_decided():
    _, why = choose_variant("flux", "pyramid_flow_miniflux_768_bf16.safetensors")
    assert "contains '768'" in why
    _, why = choose_variant("flux", "pyramid_flow_miniflux_bf16_v2.safetensors")
    assert "names no resolution" in why and "384p" in why


def test_an_override_wins_and_says_what_it_overrode():
    variant, why = choose_variant("flux", "pyramid_flow_miniflux_768_bf16.safetensors", "miniflux-384p")
    assert variant.name == "miniflux-384p"
    assert why == ("miniflux-384p: chosen on the node, overriding miniflux-768p (the name "
                   "'pyramid_flow_miniflux_768_bf16.safetensors' contains '768')")
    assert choose_variant("flux", "x_768.safetensors", "miniflux-768p")[1].endswith("(the name agrees)")
    with pytest.raises(ValueError, match="sd3-768p is a mmdit model, but the checkpoint's tensors are flux"):
        choose_variant("flux", "x.safetensors", "sd3-768p")


def test_unknown_families_and_names_are_refused():
    with pytest.raises(ValueError, match="unknown DiT family"):
        choose_variant("unet", "x")
    with pytest.raises(ValueError, match="choose one of"):
        get_variant("miniflux-512p")


def test_the_table_holds_the_reference_settings():
    image = VARIANTS["miniflux-image"]
    assert image.image_only and (image.width, image.height) == (1024, 1024)
    assert image.sizes == ((1024, 1024), (1280, 768), (768, 1280)) and image.guidance_scale == 9.0
    assert not VARIANTS["sd3-384p"].image_only
    for name, variant in VARIANTS.items():
        assert variant.name == name and variant.folder.startswith("diffusion_transformer_")
        assert (variant.width, variant.height) == {"384p": (640, 384), "768p": (1280, 768),
                                                   "image": (1024, 1024)}[name.split("-")[1]]
        assert variant.max_latent_frames == {"384p": 16, "768p": 31, "image": 1}[name.split("-")[1]]
        assert variant.guidance_scale == (7.0 if name.endswith("384p") else 9.0)
    assert VARIANTS["sd3-384p"].image_latent_shift == VARIANTS["sd3-768p"].image_latent_shift == 0.1490
