"""Checkpoint loading: official folders, single files, kinds, dtypes, and broken input."""

from __future__ import annotations

import datetime
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pyramid_core import loading
from pyramid_core.models import CausalVideoVAE, PyramidDiffusionMMDiT, PyramidFluxTransformer
from pyramid_core.models.fp8_linear import Fp8Linear, use_fp8_linears
from support import REPO_ROOT

GOLDEN = REPO_ROOT / "tests" / "data" / "golden"
TINY = {  # kind -> (class, weights, config)
    "flux": (PyramidFluxTransformer, "weights_flux_tiny.safetensors", "config_flux_tiny.json"),
    "mmdit": (PyramidDiffusionMMDiT, "weights_mmdit_tiny.safetensors", "config_mmdit_tiny.json"),
    "vae": (CausalVideoVAE, "weights_vae_tiny.safetensors", "config_vae_tiny.json"),
}


def official_folder(tmp_path, kind):
    """A diffusers-style folder as released: config.json + diffusion_pytorch_model.safetensors."""
    _, weights, config = TINY[kind]
    folder = tmp_path / f"{kind}_folder"
    folder.mkdir()
    shutil.copy(GOLDEN / config, folder / "config.json")
    shutil.copy(GOLDEN / weights, folder / "diffusion_pytorch_model.safetensors")
    return folder


def load(kind, path, **kwargs):
    return (loading.load_vae if kind == "vae" else loading.load_dit)(path, **kwargs)


def assert_same_weights(model, reference: dict):
    state = model.state_dict()
    assert set(state) == set(reference)
    for name, tensor in reference.items():
        torch.testing.assert_close(state[name], tensor.to(state[name].dtype), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kind", TINY)
def test_official_folder_loads_strictly(tmp_path, kind):
    cls, weights, _ = TINY[kind]
    model = load(kind, official_folder(tmp_path, kind), dtype="fp32")
    assert type(model) is cls and not model.training
    assert_same_weights(model, load_file(GOLDEN / weights))


@pytest.mark.parametrize("kind", ["flux", "mmdit"])
def test_single_file_without_config_derives_the_architecture(kind):
    cls, weights, config = TINY[kind]
    model = loading.load_dit(GOLDEN / weights, dtype="fp32")
    assert type(model) is cls
    released = json.loads((GOLDEN / config).read_text())
    for key, value in model.config.items():
        if key in released and key not in ("sample_size",):  # sample_size has no tensor to read
            assert value == released[key], key
    assert_same_weights(model, load_file(GOLDEN / weights))


@pytest.mark.parametrize("kind", TINY)
def test_saved_single_file_carries_its_config(tmp_path, kind):
    model = load(kind, official_folder(tmp_path, kind), dtype="fp32")
    path = loading.save_checkpoint(model, tmp_path / "exported.safetensors")
    assert not list(tmp_path.glob("*.tmp"))
    again = load(kind, path, dtype="fp32")
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(again.config) == public(model.config)
    assert_same_weights(again, model.state_dict())


def test_comfyui_prefixed_names_load(tmp_path):
    state = load_file(GOLDEN / TINY["flux"][1])
    path = tmp_path / "prefixed.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in state.items()}, str(path))
    assert_same_weights(loading.load_dit(path, dtype="fp32"), state)


@pytest.mark.parametrize("dtype,expected", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                            (torch.float32, torch.float32)])
def test_compute_dtypes(dtype, expected):
    model = loading.load_dit(GOLDEN / TINY["flux"][1], dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_fp8_storage_keeps_linear_weights_narrow_and_computes_in_bf16():
    model = loading.load_dit(GOLDEN / TINY["flux"][1], dtype="bf16", weight_dtype="fp8_e4m3fn")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    x = torch.randn(3, linears[0].in_features, dtype=torch.bfloat16)
    out = linears[0](x)
    assert out.dtype == torch.bfloat16
    reference = x.float() @ linears[0].weight.float().T + linears[0].bias.float()
    torch.testing.assert_close(out.float(), reference, rtol=2e-2, atol=2e-2)  # bf16 rounding


def test_fp8_storage_is_read_straight_into_fp8():
    """No full bf16 copy on the host (nor, so, on the device the model then goes to): the
    peak of the tensors made while loading is the fp8 model plus about one tensor."""
    from pyramid_core.models.live_bytes import LiveBytes

    path = GOLDEN / TINY["flux"][1]
    with LiveBytes("cpu") as meter:
        model = loading.load_dit(path, dtype="bf16", weight_dtype="fp8_e4m3fn")
    final = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    largest = max(t.numel() for t in model.parameters()) * 2                  # one tensor in bf16
    bf16_model = sum(t.numel() * 2 for t in model.parameters())
    assert meter.peak <= final + 2 * largest < bf16_model
    assert all(type(m) is Fp8Linear for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_matmul_agrees_with_the_upcast_to_fp8_rounding(dtype, monkeypatch):
    """The _scaled_mm path (taken on GPUs with fp8 matmuls; forced here on the CPU) against
    the upcast path: the input is rounded to fp8 too (3 mantissa bits, about 6 % per value,
    averaging out over the sum)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48).to(dtype)
    layer.weight.data = layer.weight.data.to(torch.float8_e4m3fn)
    use_fp8_linears(layer)
    x = torch.randn(2, 5, 64, dtype=dtype)
    upcast = layer(x)
    monkeypatch.setattr(Fp8Linear, "fp8_matmul", True)
    fast = layer(x)
    assert fast.dtype == dtype and fast.shape == (2, 5, 48)
    error = (fast.float() - upcast.float()).norm() / upcast.float().norm()
    assert 0 < error < 0.05, error
    assert torch.isfinite(layer(torch.zeros(3, 64, dtype=dtype))).all()      # an all-zero input stays finite


def test_fp8_as_compute_dtype_is_refused():
    with pytest.raises(ValueError, match="storage format"):
        loading.load_dit(GOLDEN / TINY["flux"][1], dtype="fp8_e4m3fn")


@pytest.mark.parametrize("kind,loader,hint", [("vae", loading.load_dit, "load_vae"),
                                              ("flux", loading.load_vae, "load_dit")])
def test_a_checkpoint_of_another_kind_says_what_it_is(kind, loader, hint):
    with pytest.raises(ValueError, match=rf"is {loading.KIND_DESCRIPTIONS[kind].split(' (')[0]}.*{hint}"):
        loader(GOLDEN / TINY[kind][1])


@pytest.mark.parametrize("names,what", [
    (["lora_unet.transformer_blocks.0.attn.to_q.lora_A.weight"], "LoRA"),
    (["text_model.encoder.layers.0.mlp.fc1.weight"], "text encoder"),
    (["double_blocks.0.img_attn.qkv.weight"], "another family"),
    (["something.else"], "not a checkpoint"),
])
def test_foreign_checkpoints_are_named(names, what):
    with pytest.raises(ValueError, match=what):
        loading.detect_kind(names)


def test_truncated_file_says_to_download_again(tmp_path):
    data = (GOLDEN / TINY["flux"][1]).read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="download it again"):
        loading.load_dit(broken)


def test_mismatched_config_lists_the_differences(tmp_path):
    folder = official_folder(tmp_path, "flux")
    config = json.loads((folder / "config.json").read_text())
    config["num_single_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing: single_transformer_blocks\.2\."):
        loading.load_dit(folder)


def test_pickled_weights_load_only_as_plain_tensors(tmp_path):
    state = load_file(GOLDEN / TINY["vae"][1])
    folder = official_folder(tmp_path, "vae")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"state_dict": state}, folder / "diffusion_pytorch_model.bin")
    assert_same_weights(loading.load_vae(folder, dtype="fp32"), state)

    evil = tmp_path / "evil.pt"
    torch.save({"x": datetime.timedelta(days=1)}, evil)  # any non-tensor object is refused
    with pytest.raises(ValueError, match="weights-only"):
        loading.read_state_dict(evil)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        loading.load_dit(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="holds no weights"):
        loading.load_dit(tmp_path)


@pytest.mark.parametrize("kind", TINY)
def test_model_kind_names_what_was_loaded(kind):
    cls, _, config = TINY[kind]
    assert loading.model_kind(cls.from_config(json.loads((GOLDEN / config).read_text()))) == kind
    with pytest.raises(ValueError, match="not a Pyramid Flow model"):
        loading.model_kind(torch.nn.Linear(2, 2))


def test_bf16_on_a_gpu_without_it_is_refused_in_one_sentence(monkeypatch):
    from pyramid_core.loading import check_dtype_supported

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ValueError, match="^Tesla T4 cannot compute in bf16: choose fp16 \\(or fp32\\)"):
        check_dtype_supported("bf16", "cuda:0")
    check_dtype_supported("fp16", "cuda:0")
    check_dtype_supported("bf16", "cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))     # A100
    check_dtype_supported("bf16", "cuda:0")
