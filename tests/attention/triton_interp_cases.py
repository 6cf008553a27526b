"""Triton kernels vs the SDPA reference, forward and all gradients, under Triton's interpreter.

Not collected by the normal test run (no ``test_`` prefix): Triton decides interpreter or GPU
when ``@triton.jit`` decorates the kernels, i.e. when pyramid_core.attention.triton_varlen is
first imported, so these cases need a process of their own in which that import happens
after TRITON_INTERPRET=1 is set. test_attention_triton_interpreter.py starts that process.
To run them directly::

    TRITON_INTERPRET=1 python -m pytest -q tests/attention/triton_interp_cases.py

Shapes are small: the interpreter costs a few ms per tile.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# The kernels themselves are under test: with the self-check on, a wrong backward would fail
# its check and quietly hand back SDPA's gradients. The self-check tests switch it on.
os.environ["PYRAMID_ATTENTION_SELFCHECK"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

import pyramid_core.attention as attn  # noqa: E402
from pyramid_core.attention import triton_varlen as tv  # noqa: E402
from attention_reference import frames_per_sequence, make_cu_seqlens, reference_varlen  # noqa: E402

if not tv.is_interpreting():  # imported earlier in this process without the interpreter
    raise RuntimeError("triton_varlen was compiled for the GPU in this process; run these cases in a fresh "
                       "process with TRITON_INTERPRET=1")

TOL = {torch.float32: (2e-5, 2e-4), torch.float16: (1e-2, 3e-2)}  # (forward, gradients) atol


def _inputs(lengths, heads, kv_heads, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    make = lambda h: torch.randn(total, h, dim, generator=g).to(dtype).requires_grad_()  # noqa: E731
    return make(heads), make(kv_heads), make(kv_heads), make_cu_seqlens(lengths)


def _check(q, k, v, cu, frames=None, run=None):
    """Forward and dq/dk/dv of ``run`` (default: the public call with backend="triton")."""
    run = run or (lambda q, k, v: attn.varlen_attention(q, k, v, cu, frame_ids=frames, backend="triton"))
    out = run(q, k, v)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = reference_varlen(qf, kf, vf, cu, frames)
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), dout.to(out.dtype))
    ref_grads = torch.autograd.grad(ref, (qf, kf, vf), dout)
    atol_fwd, atol_grad = TOL[q.dtype]
    torch.testing.assert_close(out.float(), ref, atol=atol_fwd, rtol=1e-3)
    for name, a, b in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(a.float(), b, atol=atol_grad, rtol=1e-2, msg=lambda m: f"d{name}: {m}")
    return out


def test_interpreter_is_active():
    assert tv.is_interpreting()
    q = torch.randn(4, 1, 64)
    assert attn.resolve_backend("triton", q) == "triton"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_no_mask_uneven_lengths(dtype):
    # 70 = two full 32-tiles + ragged tail; 1 = single token; 33 = one past a tile edge.
    _check(*_inputs([70, 1, 33], 2, 2, 64, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_frame_mask_pyramid_layout(dtype):
    # text tokens at frame 0, then frames of 20 tokens: frame edges cut through tiles.
    lengths = [90, 45]
    q, k, v, cu = _inputs(lengths, 2, 2, 64, dtype)
    _check(q, k, v, cu, frames_per_sequence(lengths, tokens_per_frame=20, text_tokens=7))


def test_frame_mask_tile_aligned_frames_skip_and_full_tiles():
    # frames of exactly one 32-token tile: every tile is skipped, fully visible or on the diagonal.
    lengths = [128]
    q, k, v, cu = _inputs(lengths, 1, 1, 64, torch.float32)
    _check(q, k, v, cu, frames_per_sequence(lengths, tokens_per_frame=32))


def test_frame_mask_unsorted_frame_ids():
    # Correctness must not depend on frame ids being sorted within a sequence.
    lengths = [50, 30]
    q, k, v, cu = _inputs(lengths, 2, 2, 64, torch.float32)
    frames = torch.randint(0, 4, (sum(lengths),), generator=torch.Generator().manual_seed(3)).to(torch.int32)
    _check(q, k, v, cu, frames)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("config", [
    {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1},
    {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1},
])
def test_sorted_frames_fast_path_with_runs_shorter_and_longer_than_tiles(seed, config):
    # Sorted ids take the kernels' fast path (unmasked prefix, masked band, future skipped):
    # runs of 1-70 tokens put frame edges anywhere relative to the tiles, and ids may skip
    # values or start above 0.
    g = torch.Generator().manual_seed(seed)
    lengths = [int(n) for n in torch.randint(20, 160, (3,), generator=g)]
    frames = []
    for n in lengths:
        runs = torch.randint(1, 70, (n,), generator=g)
        ids = torch.repeat_interleave(torch.arange(n) * int(torch.randint(1, 3, (), generator=g)), runs)[:n]
        frames.append(ids + int(torch.randint(0, 2, (), generator=g)))
    frames = torch.cat(frames).to(torch.int32)
    q, k, v, cu = _inputs(lengths, 2, 1, 64, torch.float32, seed=seed)
    assert tv._sorted_frames(cu, frames)
    _check(q, k, v, cu, frames, run=lambda q, k, v: tv.varlen_attention_triton(q, k, v, cu, frames, config=config))


def test_token_causal_via_frame_ids():
    lengths = [40, 3]
    q, k, v, cu = _inputs(lengths, 1, 1, 64, torch.float32)
    _check(q, k, v, cu, torch.cat([torch.arange(n) for n in lengths]).to(torch.int32))


def test_many_single_token_sequences_and_empty_sequence():
    q, k, v, _ = _inputs([1, 1, 1, 5], 2, 2, 64, torch.float32)
    cu = torch.tensor([0, 1, 2, 2, 3, 8], dtype=torch.int32)  # sequence 2 is empty
    _check(q, k, v, cu, torch.tensor([0, 0, 0, 0, 1, 1, 2, 0], dtype=torch.int32))


def test_head_dim_40_padded_with_gqa():
    lengths = [37, 20]
    q, k, v, cu = _inputs(lengths, 4, 2, 40, torch.float32)
    _check(q, k, v, cu, frames_per_sequence(lengths, tokens_per_frame=9, text_tokens=4))


def test_head_dim_128():
    lengths = [45, 12]
    q, k, v, cu = _inputs(lengths, 1, 1, 128, torch.float32)
    _check(q, k, v, cu, frames_per_sequence(lengths, tokens_per_frame=16, text_tokens=3))


def test_gqa_without_mask_fp16():
    _check(*_inputs([33, 20], 4, 1, 64, torch.float16))


def test_strided_views_of_fused_qkv_and_custom_scale():
    lengths = [40, 9]
    total, heads, dim = sum(lengths), 2, 64
    qkv = torch.randn(total, 3, heads, dim, generator=torch.Generator().manual_seed(5)).requires_grad_()
    cu = make_cu_seqlens(lengths)
    frames = frames_per_sequence(lengths, tokens_per_frame=8)
    out = attn.varlen_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, frame_ids=frames, scale=0.07, backend="triton")
    ref_in = qkv.detach().clone().requires_grad_()
    ref = reference_varlen(ref_in[:, 0], ref_in[:, 1], ref_in[:, 2], cu, frames, scale=0.07)
    dout = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, qkv, dout)
    (ref_grad,) = torch.autograd.grad(ref, ref_in, dout)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-3)
    torch.testing.assert_close(grad, ref_grad, atol=2e-4, rtol=1e-2)


@pytest.mark.parametrize("config", [
    {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 1},
    {"BLOCK_M": 64, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1},
])
def test_other_tile_shapes(config):
    lengths = [70, 18]
    q, k, v, cu = _inputs(lengths, 2, 1, 64, torch.float32)
    frames = frames_per_sequence(lengths, tokens_per_frame=12, text_tokens=5)
    _check(q, k, v, cu, frames,
           run=lambda q, k, v: tv.varlen_attention_triton(q, k, v, cu, frames, config=config))


@pytest.mark.parametrize("framed", [False, True])
def test_same_semantics_as_sdpa_backend_through_dispatch(framed):
    """The public call gives the same values and gradients with backend "triton" and "sdpa"."""
    lengths = [50, 1, 26]
    q, k, v, cu = _inputs(lengths, 4, 2, 64, torch.float32)
    frames = frames_per_sequence(lengths, tokens_per_frame=10, text_tokens=6) if framed else None
    results = {}
    for backend in ("triton", "sdpa"):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = attn.varlen_attention(*leaves, cu, frame_ids=frames, backend=backend)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        results[backend] = (out, *grads)
    for a, b in zip(results["triton"], results["sdpa"]):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)


def test_process_default_triton_is_used_by_auto():
    q, k, v, cu = _inputs([20], 1, 1, 64, torch.float32)
    with attn.default_backend("triton"):
        assert attn.resolve_backend("auto", q) == "triton"
        out = attn.varlen_attention(q, k, v, cu)
    torch.testing.assert_close(out, reference_varlen(q, k, v, cu), atol=2e-5, rtol=1e-3)


def test_bf16_is_refused_under_the_interpreter():
    q = torch.randn(4, 1, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        attn.resolve_backend("triton", q)


@pytest.mark.parametrize("call", ["flux.infer_hist", "mmdit.infer_hist", "flux.train_ar"])
def test_tiny_dit_golden_call_with_the_triton_backend(call, monkeypatch):
    """A recorded reference DiT call (history clips, frame-causal mask, packed stages for
    training) reproduced with every attention of the model running in our kernels."""
    import pyramid_core.models as models
    from golden_utils import load_config, load_nested, load_weights, section, tensor_names

    family = call.split(".")[0]
    spec = section("weights")[f"{family}_tiny"]
    model = getattr(models, spec["class"]).from_config(load_config(spec["config_file"]))
    model.load_state_dict(load_weights(spec["weights_file"]), strict=True)
    prefix = f"{call}.in."
    kwargs = {arg: load_nested(prefix + arg) for arg in {n[len(prefix):].split(".")[0] for n in tensor_names(prefix)}}
    expected = load_nested(f"{call}.out")
    expected = expected if isinstance(expected, list) else [expected]

    kernel_calls = []  # the process default falls back silently; prove the kernels ran
    kernel = tv.varlen_attention_triton
    monkeypatch.setattr(tv, "varlen_attention_triton", lambda *a, **k: kernel_calls.append(1) or kernel(*a, **k))
    with attn.default_backend("triton"), torch.no_grad():
        out = model.eval()(**kwargs)
    assert kernel_calls, "the DiT did not reach the Triton kernels"
    assert len(out) == len(expected)
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# Self-check: each kind of call is checked once; a wrong kernel falls back to SDPA
# ---------------------------------------------------------------------------------------------

from pyramid_core.attention import selfcheck  # noqa: E402


@pytest.fixture
def fresh_checks(monkeypatch):
    """No verdicts yet, the self-check on, the process default on our kernels."""
    monkeypatch.delenv(selfcheck.ENV_VAR, raising=False)
    selfcheck.reset()
    attn.set_default_backend("triton")
    yield
    attn.set_default_backend(None)
    selfcheck.reset()


def _masked_call(dtype=torch.float32, dim=64, seed=0):
    lengths = [40, 9]
    q, k, v, cu = _inputs(lengths, 2, 2, dim, dtype, seed)
    return q, k, v, cu, frames_per_sequence(lengths, tokens_per_frame=8, text_tokens=3)


def test_a_good_kernel_is_checked_once_per_kind_of_call(fresh_checks):
    for seed in range(3):
        q, k, v, cu, frames = _masked_call(seed=seed)
        out = attn.varlen_attention(q, k, v, cu, frame_ids=frames)        # "auto" -> the default, triton
        torch.autograd.grad(out.sum(), (q, k, v))
    assert selfcheck.checks_run() == 2                                   # one forward, one backward check
    q, k, v, cu, _ = _masked_call()
    attn.varlen_attention(q, k, v, cu)                                   # no mask: another kind of call
    attn.varlen_attention(*_masked_call(torch.float16)[:4], frame_ids=_masked_call()[4])   # another dtype
    assert selfcheck.checks_run() == 4


def test_a_wrong_forward_falls_back_to_sdpa_with_one_warning(fresh_checks, monkeypatch, caplog):
    real = tv.varlen_fwd

    def wrong(*args, **kwargs):
        out, lse = real(*args, **kwargs)
        return out * 1.5, lse

    monkeypatch.setattr(tv, "varlen_fwd", wrong)
    for seed in range(3):
        q, k, v, cu, frames = _masked_call(seed=seed)
        out = attn.varlen_attention(q, k, v, cu, frame_ids=frames)
        torch.testing.assert_close(out, reference_varlen(q, k, v, cu, frames), atol=2e-5, rtol=1e-3)
    warnings = [r for r in caplog.records if "failed their self-check" in r.getMessage()]
    assert len(warnings) == 1 and "the forward differs from fp32 SDPA" in warnings[0].getMessage()
    assert "python -m pyramid_core doctor" in warnings[0].getMessage()
    assert selfcheck.checks_run() == 1
    with pytest.raises(ValueError, match="'triton' failed its self-check"):
        attn.varlen_attention(q, k, v, cu, frame_ids=frames, backend="triton")


def test_a_wrong_backward_gives_sdpa_gradients(fresh_checks, monkeypatch, caplog):
    real = tv.varlen_bwd
    monkeypatch.setattr(tv, "varlen_bwd", lambda *a, **kw: tuple(g * 2 for g in real(*a, **kw)))
    _check(*_masked_call()[:4], frames=_masked_call()[4])                 # forward and gradients vs reference
    assert sum("the backward" in r.getMessage() for r in caplog.records) == 1


def test_a_kernel_that_does_not_launch_falls_back(fresh_checks, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("ptxas fatal: unsupported architecture")

    monkeypatch.setattr(tv, "varlen_fwd", broken)
    q, k, v, cu, frames = _masked_call()
    torch.testing.assert_close(attn.varlen_attention(q, k, v, cu, frame_ids=frames),
                               reference_varlen(q, k, v, cu, frames), atol=2e-5, rtol=1e-3)
    assert any("failed to run: RuntimeError: ptxas fatal" in r.getMessage() for r in caplog.records)


def test_the_check_can_be_switched_off(fresh_checks, monkeypatch):
    monkeypatch.setenv(selfcheck.ENV_VAR, "0")
    real = tv.varlen_fwd
    monkeypatch.setattr(tv, "varlen_fwd", lambda *a, **kw: (real(*a, **kw)[0] * 1.5, real(*a, **kw)[1]))
    q, k, v, cu, frames = _masked_call()
    out = attn.varlen_attention(q, k, v, cu, frame_ids=frames)
    assert selfcheck.checks_run() == 0
    assert not torch.allclose(out, reference_varlen(q, k, v, cu, frames), atol=1e-2)   # the wrong kernel ran
