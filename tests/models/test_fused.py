"""The fused elementwise chains of the DiT blocks (pyramid_core.models.fused).

On a GPU they are compiled by inductor into one kernel each; here inductor compiles them for
the CPU (the same graph, C++ instead of Triton), which shows the compiled chain computes what
the eager one does, values and gradients, and that a compile failure falls back to eager.
"""

from __future__ import annotations

import logging

import pytest
import torch

from pyramid_core.models import fused
from pyramid_core.models.dit_layers import rope_angles, rope_rotations


def _qk(tokens: int, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, tokens, 3, 16, generator=g) * 3).to(dtype)
    weight = (1 + 0.1 * torch.randn(16, generator=g)).to(dtype)
    rotations = rope_rotations(rope_angles(torch.rand(tokens, 3, generator=g) * 30, (4, 6, 6)))
    return x, weight, rotations


@pytest.fixture
def fresh():
    for fn in (fused.rms_norm_rope, fused.layer_norm_modulate):
        fn.state.update(compiled=None, proven=False, failed=False)
    yield
    for fn in (fused.rms_norm_rope, fused.layer_norm_modulate):
        fn.state.update(compiled=None, proven=False, failed=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_norm_rope_equals_the_eager_chain(dtype):
    compiled = torch.compile(fused.rms_norm_rope.eager, dynamic=True, fullgraph=True)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1.6e-2)
    for tokens in (12, 37):                          # dynamic shapes: a new length, no new code
        x, weight, rotations = _qk(tokens, dtype, seed=tokens)
        for rot in (rotations, None):
            eager = fused.rms_norm_rope.eager(x, weight, 1e-6, rot)
            assert eager.dtype == dtype
            torch.testing.assert_close(compiled(x, weight, 1e-6, rot), eager, **tol)


def test_compiled_chains_have_the_eager_gradients():
    x, weight, rotations = _qk(20, torch.float32)
    shift, scale = torch.randn(2, 1, 48), torch.randn(2, 1, 48)
    tokens = torch.randn(2, 20, 48)
    cases = [(fused.rms_norm_rope.eager, (x, weight), (1e-6, rotations)),
             (fused.layer_norm_modulate.eager, (tokens, shift, scale), (1e-6,))]
    for fn, tensors, rest in cases:
        compiled = torch.compile(fn, dynamic=True, fullgraph=True)
        grads = []
        for run in (fn, compiled):
            inputs = [t.detach().clone().requires_grad_() for t in tensors]
            out = run(*inputs, *rest)
            out.backward(torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out))
            grads.append([t.grad for t in inputs])
        for a, b in zip(*grads):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_layer_norm_modulate_is_the_reference_chain():
    g = torch.Generator().manual_seed(1)
    x, shift, scale = torch.randn(2, 9, 32, generator=g), torch.randn(2, 1, 32, generator=g), torch.randn(2, 1, 32, generator=g)
    expected = torch.nn.functional.layer_norm(x, (32,), eps=1e-6) * (1 + scale) + shift
    torch.testing.assert_close(fused.layer_norm_modulate(x, shift, scale, 1e-6), expected)
    compiled = torch.compile(fused.layer_norm_modulate.eager, dynamic=True, fullgraph=True)
    torch.testing.assert_close(compiled(x, shift, scale, 1e-6), expected, rtol=1e-5, atol=1e-5)


def test_where_compiling_is_wanted_the_compiled_chain_runs_once_proven(fresh, monkeypatch):
    monkeypatch.setattr(fused, "compiles_here", lambda x: True)
    x, weight, rotations = _qk(10, torch.float32)
    out = fused.rms_norm_rope(x, weight, 1e-6, rotations)           # compiled by inductor (CPU here)
    assert fused.rms_norm_rope.state["proven"]
    torch.testing.assert_close(out, fused.rms_norm_rope.eager(x, weight, 1e-6, rotations), rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(fused.ENV_VAR, "0")                         # the off switch: eager
    assert torch.equal(fused.rms_norm_rope(x, weight, 1e-6, rotations), fused.rms_norm_rope.eager(x, weight, 1e-6, rotations))


def test_a_compile_failure_falls_back_to_eager_once(fresh, monkeypatch, caplog):
    monkeypatch.setattr(fused, "compiles_here", lambda x: True)
    attempts = []

    def broken_compile(fn, **kwargs):
        def run(*args):
            attempts.append(1)
            raise RuntimeError("triton: unsupported GPU")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    x, weight, rotations = _qk(10, torch.float32)
    with caplog.at_level(logging.WARNING, logger="pyramid_core.models"):
        for _ in range(3):
            out = fused.rms_norm_rope(x, weight, 1e-6, rotations)
    assert torch.equal(out, fused.rms_norm_rope.eager(x, weight, 1e-6, rotations))
    assert len(attempts) == 1 and "could not compile the fused rms_norm_rope" in caplog.text
