"""Argument checks and backend selection of pyramid_core.attention (CPU, SDPA; fast)."""

from __future__ import annotations

import pytest
import torch

import pyramid_core.attention as attn
from pyramid_core.attention import checks, dispatch
from attention_reference import make_cu_seqlens, reference_varlen

T, H, D = 12, 2, 16


def _qkv(total=T, heads=H, kv_heads=H, dim=D, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(total, heads, dim, generator=g, dtype=dtype),
            torch.randn(total, kv_heads, dim, generator=g, dtype=dtype),
            torch.randn(total, kv_heads, dim, generator=g, dtype=dtype))


@pytest.fixture(autouse=True)
def _clean_default(monkeypatch):
    monkeypatch.delenv(attn.ENV_VAR, raising=False)
    attn.set_default_backend(None)
    yield
    attn.set_default_backend(None)


# --------------------------------------------------------------------------------------------
# SDPA backend semantics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("framed", [False, True])
def test_sdpa_matches_reference(kv_heads, framed):
    q, k, v = _qkv(kv_heads=kv_heads)
    cu = make_cu_seqlens([5, 0, 1, 6])
    frames = torch.tensor([0, 0, 1, 1, 2, 0, 0, 3, 1, 2, 2, 0], dtype=torch.int32) if framed else None
    out = attn.varlen_attention(q, k, v, cu, frame_ids=frames, backend="sdpa")
    torch.testing.assert_close(out, reference_varlen(q, k, v, cu, frames), atol=1e-5, rtol=1e-5)


def test_frame_blocks_are_the_runs_of_non_decreasing_ids():
    from pyramid_core.attention.sdpa import frame_blocks

    assert frame_blocks(torch.tensor([0, 0, 1, 1, 1, 2], dtype=torch.int32)) == [2, 5, 6]
    assert frame_blocks(torch.tensor([0], dtype=torch.int32)) == [1]
    assert frame_blocks(torch.tensor([0, 2, 1], dtype=torch.int32)) is None


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_block_causal_sdpa_equals_the_masked_definition_with_gradients(kv_heads):
    """The models' layout (text at frame 0, history clips, the noisy clip last): one unmasked
    SDPA per frame over its key prefix gives the masked attention and its gradients."""
    g = torch.Generator().manual_seed(3)
    runs = [[7, 3, 3, 5, 9], [4, 11], [2, 1, 1, 1, 6, 6]]            # tokens per frame, per sequence
    frames = torch.cat([torch.repeat_interleave(torch.arange(len(r), dtype=torch.int32), torch.tensor(r))
                        for r in runs])
    cu = make_cu_seqlens([sum(r) for r in runs])
    total = int(cu[-1])
    q, k, v = (torch.randn(total, h, 16, generator=g, requires_grad=True) for h in (4, kv_heads, kv_heads))
    out = attn.varlen_attention(q, k, v, cu, frame_ids=frames, backend="sdpa")
    expected = reference_varlen(q, k, v, cu, frames)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), upstream)
    reference_grads = torch.autograd.grad(expected, (q, k, v), upstream)
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_dense_attention_is_sdpa():
    q = torch.randn(2, 3, 5, 8)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    out = attn.attention(q, q, q, mask=mask, scale=0.3)
    ref = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(out, ref)


# --------------------------------------------------------------------------------------------
# Bad input: a ValueError that names the argument
# --------------------------------------------------------------------------------------------


def _call(q=None, k=None, v=None, cu=None, **kw):
    q0, k0, v0 = _qkv()
    cu0 = make_cu_seqlens([5, 7])
    return attn.varlen_attention(q0 if q is None else q, k0 if k is None else k, v0 if v is None else v,
                                 cu0 if cu is None else cu, **kw)


@pytest.mark.parametrize("kwargs, match", [
    (dict(q=torch.randn(T, H * D)), "q must be"),
    (dict(k=torch.randn(T, H, D, dtype=torch.float64)), "k has dtype"),
    (dict(v=torch.randn(T, H, D + 1)), "k and v must have the same shape"),
    (dict(k=torch.randn(T + 1, H, D), v=torch.randn(T + 1, H, D)), "k has 13 tokens"),
    (dict(k=torch.randn(T, H, 8), v=torch.randn(T, H, 8)), "head_dim"),
    (dict(k=torch.randn(T, 3, D), v=torch.randn(T, 3, D)), "must divide q heads"),
    (dict(q=torch.randint(0, 3, (T, H, D))), "q must be a floating-point"),
    (dict(k=torch.randn(T, H, D, device="meta"), v=torch.randn(T, H, D, device="meta")), "k is on meta"),
    (dict(cu=make_cu_seqlens([5, 7]).long()), "cu_seqlens must be int32"),
    (dict(cu=torch.tensor([1, 5, 12], dtype=torch.int32)), "cu_seqlens must start at 0"),
    (dict(cu=torch.tensor([0, 7, 5, 12], dtype=torch.int32)), "cu_seqlens must be non-decreasing"),
    (dict(cu=torch.tensor([0, 5, 11], dtype=torch.int32)), "cu_seqlens must end at total_tokens=12"),
    (dict(cu=torch.tensor([0], dtype=torch.int32)), "cu_seqlens must be 1-D"),
    (dict(cu=torch.tensor([[0, 12]], dtype=torch.int32)), "cu_seqlens must be 1-D"),
    (dict(cu=[0, 12]), "cu_seqlens must be a torch.Tensor"),
    (dict(frame_ids=torch.zeros(T - 1, dtype=torch.int32)), "frame_ids must be 1-D with one entry per token"),
    (dict(frame_ids=torch.zeros(T, dtype=torch.int64)), "frame_ids must be int32"),
    (dict(frame_ids=torch.zeros(T, dtype=torch.int32, device="meta")), "frame_ids is on meta"),
    (dict(scale=-1.0), "scale must be"),
    (dict(backend="cudnn"), "not a backend"),
])
def test_bad_input_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _call(**kwargs)


def test_cu_seqlens_values_are_rechecked_after_in_place_change():
    cu = make_cu_seqlens([5, 7])
    _call(cu=cu)
    cu[1] = 13  # now decreasing
    with pytest.raises(ValueError, match="non-decreasing"):
        _call(cu=cu)


def test_cu_seqlens_value_check_is_cached_per_tensor(monkeypatch):
    calls = []
    real = checks._check_cu_seqlens_values
    monkeypatch.setattr(checks, "_check_cu_seqlens_values", lambda *a: calls.append(1) or real(*a))
    cu = make_cu_seqlens([5, 7])
    for _ in range(3):
        _call(cu=cu)
    assert len(calls) == 1


# --------------------------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------------------------


def test_auto_on_cpu_is_sdpa_and_does_not_import_triton_kernels():
    q, _, _ = _qkv()
    assert attn.resolve_backend("auto", q) == "sdpa"


@pytest.mark.parametrize("name", ["triton", "flash_attn", "sage"])
def test_unavailable_explicit_backend_raises(name):
    # CPU tensors outside the interpreter: none of these can run the call.
    with pytest.raises(ValueError, match=f"attention backend '{name}' is unavailable"):
        _call(backend=name)


def test_frame_mask_rejected_by_mask_free_backends():
    q, _, _ = _qkv()
    frames = torch.zeros(T, dtype=torch.int32)
    from pyramid_core.attention import external

    for reason in (external._cuda_half_reason("flash_attn", q, frames), external._cuda_half_reason("sage", q, frames)):
        assert "frame-causal mask" in reason


def test_set_default_backend_and_context_manager():
    assert attn.get_default_backend() == "auto"
    attn.set_default_backend("sdpa")
    assert attn.get_default_backend() == "sdpa"
    with attn.default_backend("auto"):
        assert attn.get_default_backend() == "auto"
    assert attn.get_default_backend() == "sdpa"
    with pytest.raises(ValueError, match="not a backend"):
        attn.set_default_backend("fast")


def test_default_backend_that_is_not_installed_is_refused_early():
    if dispatch._installed_reason("flash_attn") is None:
        pytest.skip("flash_attn is installed here")  # the refusal needs it absent
    with pytest.raises(ValueError, match="cannot make 'flash_attn' the default"):
        attn.set_default_backend("flash_attn")


def test_env_var_selects_default(monkeypatch):
    monkeypatch.setenv(attn.ENV_VAR, "sdpa")
    assert attn.get_default_backend() == "sdpa"
    monkeypatch.setenv(attn.ENV_VAR, "warp-speed")
    with pytest.raises(ValueError, match=attn.ENV_VAR):
        _call()


def test_default_that_cannot_serve_a_call_falls_back_to_auto(monkeypatch):
    # A process default of "triton" must not break CPU calls (e.g. a CPU text path):
    # explicit backend= is strict, the default is a preference.
    monkeypatch.setenv(attn.ENV_VAR, "triton")
    q, k, v = _qkv()
    cu = make_cu_seqlens([5, 7])
    if dispatch._triton_reason(q) is not None:
        assert attn.resolve_backend("auto", q) == "sdpa"
        torch.testing.assert_close(attn.varlen_attention(q, k, v, cu), reference_varlen(q, k, v, cu))


def test_a_default_that_cannot_serve_a_call_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_fallbacks_told", set())
    monkeypatch.setenv(attn.ENV_VAR, "sdpa")
    q, _, _ = _qkv()
    monkeypatch.setattr(dispatch, "get_default_backend", lambda: "flash_attn")
    monkeypatch.setattr(dispatch, "_call_reason", lambda name, q, frame_ids: "needs CUDA fp16/bf16 tensors")
    for _ in range(3):
        assert attn.resolve_backend("auto", q) == "sdpa"
    told = [r.getMessage() for r in caplog.records if "cannot run some calls" in r.getMessage()]
    assert told == ["pyramid_core attention: the default backend 'flash_attn' cannot run some calls "
                    "(needs CUDA fp16/bf16 tensors); those use 'sdpa'"]
