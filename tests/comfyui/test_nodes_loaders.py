"""The files users already have load through the loader nodes and pick their variant unasked.

Tiny stand-ins under the names and with the dtype mix of the community single files (the
older wrapper's, huggingface.co/Kijai/pyramid-flow-comfy), of the official release's
folders, and of the VAE files; each DiT Loader run says which variant it chose and why.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_models, next to this file
from tiny_models import (  # noqa: E402
    KEEP_IN_BF16, load_api_workflow, shrink, write_community_dit, write_tiny_dit, write_tiny_vae,
)
from tiny_checkpoints import GOLDEN  # noqa: E402

from pyramid_core.loading import load_dit  # noqa: E402

COMMUNITY_DITS = [
    ("pyramid_flow_miniflux_bf16_v2.safetensors", "bf16", "miniflux-384p"),
    ("pyramid_flow_miniflux_bf16_v1.safetensors", "bf16", "miniflux-384p"),
    ("pyramid_flow_miniflux_768_bf16.safetensors", "bf16", "miniflux-768p"),
    ("pyramid_flow_miniflux_fp8_e4m3fn_v2.safetensors", "fp8_e4m3fn", "miniflux-384p"),
    ("pyramid_flow_miniflux_768_fp8_e4m3fn.safetensors", "fp8_e4m3fn", "miniflux-768p"),
]


def _loader_text(entry: dict, node: str = "2") -> str:
    return "\n".join(entry["outputs"][node]["text"])


def _t2v_with(dit_name: str, precision: str = "fp32", variant: str = "auto", seed: int = 3) -> dict:
    prompt = shrink(load_api_workflow("pyramid_flow_t2v_384p"), seed=seed)
    prompt["2"]["inputs"].update(dit_name=dit_name, precision=precision, variant=variant)
    return prompt


@pytest.mark.parametrize("name, storage, expected", COMMUNITY_DITS)
def test_community_dit_files_load_and_pick_their_variant(tiny_comfyui, name, storage, expected):
    write_community_dit(tiny_comfyui.models_dir, name, storage)
    for precision in ("fp32", "fp8_e4m3fn"):
        entry = tiny_comfyui.run(_t2v_with(name, precision), timeout=240)
        text = _loader_text(entry)
        assert text.startswith(f"variant {expected}: the tensors are flux; the name '{name}'"), text


def test_an_fp8_file_loads_its_own_values():
    """The fp8 Linear weights are upcast exactly; the bf16 norms and biases stay as stored."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = write_community_dit(folder, "pyramid_flow_miniflux_fp8_e4m3fn_v2.safetensors", "fp8_e4m3fn")
        stored = load_file(str(path))
        assert {t.dtype for t in stored.values()} == {torch.float8_e4m3fn, torch.bfloat16}
        assert all(stored[k].dtype == torch.bfloat16 for k in stored if any(w in k for w in KEEP_IN_BF16))
        model = load_dit(path, dtype="fp32")
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], stored[k].float()) for k in stored)
        kept = load_dit(path, dtype="bf16", weight_dtype="fp8_e4m3fn").state_dict()
        assert all(torch.equal(kept[k].float(), stored[k].float()) for k in stored)


def test_an_override_wins_over_the_name_and_is_shown(tiny_comfyui):
    write_tiny_dit(tiny_comfyui.models_dir, "pyramid_flow_miniflux_768_bf16_override.safetensors")
    entry = tiny_comfyui.run(_t2v_with("pyramid_flow_miniflux_768_bf16_override.safetensors",
                                       variant="miniflux-384p", seed=4), timeout=240)
    assert _loader_text(entry).startswith("variant miniflux-384p: chosen on the node, overriding miniflux-768p")
    assert "variant miniflux-384p: chosen on the node, overriding miniflux-768p" in tiny_comfyui.log_text()


def test_the_sd3_384p_folder_is_detected_and_generates(tiny_comfyui):
    root = tiny_comfyui.models_dir / "diffusion_models" / "pyramid-flow-sd3"
    (root / "diffusion_transformer_384p").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GOLDEN / "weights_mmdit_tiny.safetensors",
                    root / "diffusion_transformer_384p" / "diffusion_pytorch_model.safetensors")
    shutil.copyfile(GOLDEN / "config_mmdit_tiny.json", root / "diffusion_transformer_384p" / "config.json")
    # the shipped text-to-video workflow with the SD3 384p folder in the DiT Loader (the tiny
    # text encoders have the widths of both tiny DiTs)
    prompt = _t2v_with("pyramid-flow-sd3/diffusion_transformer_384p", seed=8)
    message = _loader_text(tiny_comfyui.run(prompt, timeout=240))
    assert message == ("variant sd3-384p: the tensors are mmdit; the name "
                       "'pyramid-flow-sd3/diffusion_transformer_384p' contains '384'")


def _vae_decode_prompt(vae_name: str) -> dict:
    return {
        "1": {"class_type": "PyramidFlowVAELoader", "inputs": {"vae_name": vae_name, "precision": "fp32"}},
        "2": {"class_type": "PyramidFlowEmptyLatent", "inputs": {
            "width": 128, "height": 64, "length": 9, "seconds": 0.0, "batch_size": 1}},
        "3": {"class_type": "PyramidFlowVAEDecode",
              "inputs": {"vae": ["1", 0], "samples": ["2", 0], "chunk_size": 1, "tile_size": 0}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def test_vae_files_load_as_users_keep_them(tiny_comfyui):
    """The community bf16/fp32 single files and the official causal_video_vae folder with its
    diffusion_pytorch_model.bin (read with torch.load(weights_only=True)) load and decode."""
    vae_dir = tiny_comfyui.models_dir / "vae"
    write_tiny_vae(tiny_comfyui.models_dir, "pyramid_flow_vae_fp32.safetensors")
    bf16 = write_tiny_vae(tiny_comfyui.models_dir, "pyramid_flow_vae_bf16.safetensors")
    with safe_open(str(bf16), framework="pt") as f:   # keep the config metadata, store the weights in bf16
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(bf16), metadata=metadata)
    assert {t.dtype for t in load_file(str(bf16)).values()} == {torch.bfloat16}
    official = vae_dir / "pyramid-flow-miniflux" / "causal_video_vae"
    official.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GOLDEN / "config_vae_tiny.json", official / "config.json")
    torch.save(load_file(str(GOLDEN / "weights_vae_tiny.safetensors")), official / "diffusion_pytorch_model.bin")
    for name in ("pyramid_flow_vae_fp32.safetensors", "pyramid_flow_vae_bf16.safetensors",
                 "pyramid-flow-miniflux/causal_video_vae"):
        entry = tiny_comfyui.run(_vae_decode_prompt(name), timeout=120)
        assert entry["status"]["status_str"] == "success", name


def _execution_errors(entry: dict) -> list[str]:
    return [m[1]["exception_message"] for m in entry["status"]["messages"] if m[0] == "execution_error"]


def test_model_files_load_wherever_comfyui_lists_them(tiny_comfyui, tmp_path):
    """A VAE file and an official DiT folder symlinked in from another disk load (ComfyUI
    lists them, so the loaders take them); a name that climbs out of the folder with '..'
    into a sibling whose name extends the real one (models/vae2 for models/vae), or an
    absolute path, is refused before anything loads."""
    elsewhere = tmp_path / "other_disk"
    elsewhere.mkdir()
    real_vae = write_tiny_vae(elsewhere, "kept_elsewhere.safetensors")
    linked = tiny_comfyui.models_dir / "vae" / "linked_vae.safetensors"
    linked.unlink(missing_ok=True)
    linked.symlink_to(real_vae)
    options = tiny_comfyui.object_info("PyramidFlowVAELoader")["PyramidFlowVAELoader"]["input"]["required"]
    assert "linked_vae.safetensors" in options["vae_name"][1]["options"]
    assert tiny_comfyui.run(_vae_decode_prompt("linked_vae.safetensors"), timeout=120)["status"]["status_str"] \
        == "success"

    dit_folder = elsewhere / "pyramid-flow-sd3" / "diffusion_transformer_384p"
    dit_folder.mkdir(parents=True)
    shutil.copyfile(GOLDEN / "weights_mmdit_tiny.safetensors", dit_folder / "diffusion_pytorch_model.safetensors")
    shutil.copyfile(GOLDEN / "config_mmdit_tiny.json", dit_folder / "config.json")
    linked_repo = tiny_comfyui.models_dir / "diffusion_models" / "linked-sd3"
    if linked_repo.is_symlink():
        linked_repo.unlink()
    linked_repo.symlink_to(dit_folder.parent, target_is_directory=True)
    message = _loader_text(tiny_comfyui.run(_t2v_with("linked-sd3/diffusion_transformer_384p", seed=9),
                                            timeout=240))
    assert message.startswith("variant sd3-384p: the tensors are mmdit"), message

    sibling = tiny_comfyui.models_dir / "vae2"
    sibling.mkdir(exist_ok=True)
    shutil.copyfile(real_vae, sibling / "outside.safetensors")
    for name in ("../vae2/outside.safetensors", str(sibling / "outside.safetensors")):
        message = _refusal(tiny_comfyui, _vae_decode_prompt(name))            # when queued
        assert "not an absolute path or one that climbs out with '..'" in message, (name, message)


def _refusal(server, prompt: dict) -> str:
    """The message of a prompt refused when queued (before any node runs); fails if it was queued."""
    from comfyui_harness import ComfyUIError

    with pytest.raises(ComfyUIError, match=r"POST /prompt was refused \(400\)") as refused:
        server.submit(prompt)
    return str(refused.value)


def test_a_missing_published_file_is_refused_when_queued_naming_its_folder_url_and_command(tiny_comfyui):
    """A workflow shared without its files: the prompt is refused as it is queued (nothing
    loads), and the loader's message says where it looked, where the file comes from and the
    command that fetches it (the stand-in is moved away for the test)."""
    name = "pyramid_flow_miniflux_768_bf16.safetensors"
    present = tiny_comfyui.models_dir / "diffusion_models" / name
    aside = present.with_name("moved_aside.bin")
    present.replace(aside)
    try:
        message = _refusal(tiny_comfyui, _t2v_with(name, seed=13))
    finally:
        aside.replace(present)
    assert f"{name!r} is not in models/diffusion_models (looked in " in message, message
    assert str(present.parent) in message
    assert f"https://huggingface.co/Kijai/pyramid-flow-comfy/resolve/main/{name}" in message
    assert "python -m pyramid_core download miniflux-768p --comfyui" in message


def test_a_file_of_another_kind_or_a_wrong_variant_is_refused_when_queued(tiny_comfyui):
    """A VAE picked in the DiT Loader, a DiT in the VAE Loader, and an SD3 variant forced on a
    miniFLUX file are refused before any node runs, one message per loader; a variant of the
    file's family passes."""
    vae_as_dit = tiny_comfyui.models_dir / "diffusion_models" / "looks_like_a_dit.safetensors"
    shutil.copyfile(tiny_comfyui.models_dir / "vae" / "pyramid_flow_vae_bf16.safetensors", vae_as_dit)
    message = _refusal(tiny_comfyui, _t2v_with(vae_as_dit.name))
    assert "'looks_like_a_dit.safetensors' in models/diffusion_models is a causal video VAE" in message
    assert "load this one with the Pyramid Flow VAE Loader" in message

    assert message.count("looks_like_a_dit.safetensors' in models") == 1, "one message per loader"

    prompt = _t2v_with("pyramid_flow_miniflux_bf16_v2.safetensors")
    shutil.copyfile(tiny_comfyui.models_dir / "diffusion_models" / "pyramid_flow_miniflux_bf16_v2.safetensors",
                    tiny_comfyui.models_dir / "vae" / "a_dit_in_vae.safetensors")
    vae_node = next(k for k, v in prompt.items() if v["class_type"] == "PyramidFlowVAELoader")
    prompt[vae_node]["inputs"]["vae_name"] = "a_dit_in_vae.safetensors"
    assert "'a_dit_in_vae.safetensors' in models/vae is a miniFLUX pyramid DiT" in _refusal(tiny_comfyui, prompt)

    message = _refusal(tiny_comfyui, _t2v_with("pyramid_flow_miniflux_bf16_v2.safetensors", seed=14,
                                                variant="sd3-384p"))
    assert ("'pyramid_flow_miniflux_bf16_v2.safetensors' in models/diffusion_models: variant sd3-384p is a mmdit "
            "model, but the checkpoint's tensors are flux: choose a flux variant or auto") in message, message
    assert message.count("variant sd3-384p is a mmdit model") == 1, "one message per loader"
    entry = tiny_comfyui.run(_t2v_with("pyramid_flow_miniflux_bf16_v2.safetensors", seed=14,
                                       variant="miniflux-768p"), timeout=240)
    assert entry["status"]["status_str"] == "success"


def test_the_dit_loader_takes_preview_colours_fitted_to_a_vae(tiny_comfyui):
    """A fit-preview file in models/vae is offered on the DiT Loader; a broken one is refused
    before the DiT loads."""
    from pyramid_core.preview import BUILTIN_FACTORS

    vae_dir = tiny_comfyui.models_dir / "vae"
    BUILTIN_FACTORS.save(vae_dir / "my_vae_preview.json")
    (vae_dir / "broken_preview.json").write_text("{}")
    options = tiny_comfyui.object_info("PyramidFlowDiTLoader")["PyramidFlowDiTLoader"]["input"]["optional"]
    assert {"my_vae_preview.json", "broken_preview.json"} <= set(options["preview"][1]["options"])
    prompt = _t2v_with("pyramid_flow_miniflux_bf16_v2.safetensors", seed=6)
    prompt["2"]["inputs"]["preview"] = "my_vae_preview.json"
    assert tiny_comfyui.run(prompt, timeout=240)["status"]["status_str"] == "success"
    prompt["2"]["inputs"]["preview"] = "broken_preview.json"
    errors = _execution_errors(tiny_comfyui.wait(tiny_comfyui.submit(prompt), timeout=120))
    assert errors and "not a preview factors file" in errors[0], errors


def test_the_dit_loader_compiles_on_request_and_gives_the_same_video(tiny_comfyui):
    """torch.compile (inductor on this CPU) of the DiT blocks: the same latents within the
    rounding of reordered float ops."""
    from test_nodes_sampling import _run_to_latent

    eager = _run_to_latent(tiny_comfyui, _t2v_with("pyramid_flow_miniflux_bf16_v2.safetensors", seed=12), "10")
    prompt = _t2v_with("pyramid_flow_miniflux_bf16_v2.safetensors", seed=12)
    prompt["2"]["inputs"]["compile"] = "default"
    compiled = _run_to_latent(tiny_comfyui, prompt, "10")
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-4)
