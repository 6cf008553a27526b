"""The elementwise chains of the DiT blocks, each one kernel on a GPU.

Eager PyTorch runs every op of a chain as its own kernel, each reading and writing the whole
token tensor: the per-head RMS norm of q and k followed by RoPE is ~15 passes over
``(tokens, heads, K)``, the affine-free LayerNorm followed by the adaLN modulation two. At
the 768p top stage (30,800 tokens x 1920 channels, a CFG pair) that is gigabytes of memory
traffic per block, a sizable share of its time by a bytes-moved estimate (not yet measured
on a GPU: benchmarks/gpu_check.py). Here each chain is one function, written once in
plain PyTorch ops (the reference semantics, and what runs on CPUs); on CUDA it is compiled
by inductor (``torch.compile``, dynamic shapes, so no recompiles across stages or units)
into one fused Triton kernel, forward and backward. Inductor's FX-graph and kernel caches
keep the compiled kernels on disk for the next process.

``PYRAMID_FUSED_OPS=0`` runs them eagerly everywhere. A compile that fails on some GPU or
Triton falls back to the eager function for the rest of the process, with one warning.
Inside an already compiled model (:mod:`pyramid_core.compile`) the eager function is traced
into the surrounding graph instead.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F

ENV_VAR = "PYRAMID_FUSED_OPS"
log = logging.getLogger("pyramid_core.models")


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def compiles_here(x: torch.Tensor) -> bool:
    """Whether a chain on ``x`` is compiled: CUDA tensors (inductor's CPU code would need a C++
    compiler at run time, and the CPU gains little)."""
    return x.device.type == "cuda"


def fused_on_cuda(fn):
    """``fn`` eagerly, or on CUDA tensors its ``torch.compile``'d twin (see the module docstring).
    The wrapper keeps ``fn`` as ``.eager`` and its compile state as ``.state``."""
    state = {"compiled": None, "proven": False, "failed": False}

    @functools.wraps(fn)
    def run(x: torch.Tensor, *args):
        if not compiles_here(x) or state["failed"] or not enabled() or torch.compiler.is_compiling():
            return fn(x, *args)
        if state["compiled"] is None:
            state["compiled"] = torch.compile(fn, dynamic=True, fullgraph=True)
        if state["proven"]:
            return state["compiled"](x, *args)
        try:
            out = state["compiled"](x, *args)
        except Exception as err:  # noqa: BLE001 -- a compiler problem on this machine: stay correct
            state["failed"] = True
            log.warning("pyramid_core: could not compile the fused %s (%s: %s); it runs unfused from now on",
                        fn.__name__, type(err).__name__, str(err)[:300])
            return fn(x, *args)
        state["proven"] = True
        return out

    run.eager, run.state = fn, state
    return run


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs ``(x[2i], x[2i+1])`` to
    ``(x0 cos - x1 sin, x0 sin + x1 cos)``: the reference's complex64 product, written out so
    that inductor can fuse it (it cannot fuse complex ops).

    Args:
        x: ``(..., L, H, K)``.
        rotations: ``(L, K / 2, 2)`` cos/sin from :func:`~.dit_layers.rope_rotations`.

    Returns:
        ``(..., L, H, K)`` in the dtype of ``x`` (the rotation runs in fp32).
    """
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)                  # 2 x (..., L, H, K/2)
    cos, sin = rotations[:, None, :, 0], rotations[:, None, :, 1]          # 2 x (L, 1, K/2)
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).to(x.dtype)


@fused_on_cuda
def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, rotations: torch.Tensor | None) -> torch.Tensor:
    """Per-head RMS norm with a gain, then RoPE: the q/k path of every attention block.

    Args:
        x: ``(..., L, H, K)`` projected queries or keys.
        weight: ``(K,)`` gain; its dtype is the result's (as the reference's norm, which
            rounds the normalised values to the gain's dtype before multiplying).
        eps: added to the mean square.
        rotations: ``(L, K / 2, 2)`` cos/sin (:func:`~.dit_layers.rope_rotations`), or None.

    Returns:
        ``(..., L, H, K)`` in ``weight``'s dtype; statistics and rotation in fp32.
    """
    variance = x.float().pow(2).mean(-1, keepdim=True)                     # (..., L, H, 1)
    y = (x * torch.rsqrt(variance + eps)).to(weight.dtype) * weight        # (..., L, H, K)
    return y if rotations is None else apply_rope(y, rotations)


@fused_on_cuda
def layer_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """``layer_norm(x) * (1 + scale) + shift``: the adaLN input of every block.

    Args:
        x: ``(N, L, D)`` tokens.
        shift, scale: ``(N, 1, D)`` (or broadcastable) per-row modulation.
        eps: the LayerNorm's eps (no affine terms).

    Returns:
        ``(N, L, D)`` in x's dtype.
    """
    return torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=eps), 1 + scale)
