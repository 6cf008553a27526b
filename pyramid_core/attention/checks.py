"""Argument checks for :func:`pyramid_core.attention.varlen_attention`, shared by every backend.

What is checked, and what it costs:

* Always, from tensor metadata only (no device work): q/k/v are 3-D ``(tokens, heads,
  head_dim)`` floating tensors of one dtype and one device, k and v have the same shape, the
  same token count and head_dim as q, and a head count dividing q's; ``cu_seqlens`` is a 1-D
  int32 tensor with at least 2 entries on q's device; ``frame_ids`` is a 1-D int32 tensor with
  one entry per token on q's device; ``scale`` is a positive finite number.
* The *values* of ``cu_seqlens`` (starts at 0, never decreases, ends at ``total_tokens``):
  free for CPU tensors; for CUDA tensors this needs one host synchronisation, so the result is
  remembered per tensor object (weak reference + version counter): a DiT that builds
  ``cu_seqlens`` once and calls attention in every layer pays one sync per forward, not per
  layer. Tensors created under ``torch.inference_mode`` have no version counter; for them a
  cached result assumes they are not modified in place afterwards.
* ``frame_ids`` values are not checked: any int32 values define a valid mask (a token always
  sees itself, so no row is ever fully masked).

Empty sequences (``cu_seqlens[b] == cu_seqlens[b + 1]``) are allowed.
"""

from __future__ import annotations

import math

import torch

from .plan import TensorMemo

_validated_cu_seqlens = TensorMemo()


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Shapes, dtypes and devices of packed ``q, k, v``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
        if t.dim() != 3:
            raise ValueError(f"{name} must be (total_tokens, heads, head_dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but q has {q.dtype}; pass one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; move them to one device")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"k has {k.shape[0]} tokens but q has {q.shape[0]}; self-attention packs both alike")
    if k.shape[2] != q.shape[2]:
        raise ValueError(f"k has head_dim {k.shape[2]} but q has {q.shape[2]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"k/v heads ({k.shape[1]}) must divide q heads ({q.shape[1]}) (grouped-query attention)")


def check_cu_seqlens(cu_seqlens: torch.Tensor, total_tokens: int, device: torch.device) -> None:
    """Metadata always; values once per tensor object (see the module docstring)."""
    _check_tensor("cu_seqlens", cu_seqlens)
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with num_seqs + 1 >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {device}")

    # Only a passing check is remembered: a failing one raises before get() stores anything.
    _validated_cu_seqlens.get((cu_seqlens,), total_tokens, lambda: _check_cu_seqlens_values(cu_seqlens, total_tokens))


def _check_cu_seqlens_values(cu_seqlens: torch.Tensor, total_tokens: int) -> None:
    if cu_seqlens.device.type != "cpu":
        # One sync for the common (valid) case; details only on failure.
        bad = (cu_seqlens[0] != 0) | (cu_seqlens[-1] != total_tokens) | (cu_seqlens[1:] < cu_seqlens[:-1]).any()
        if not bool(bad):
            return
        cu_seqlens = cu_seqlens.cpu()
    first, last = int(cu_seqlens[0]), int(cu_seqlens[-1])
    if first != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {first}")
    steps = cu_seqlens[1:] - cu_seqlens[:-1]
    if bool((steps < 0).any()):
        b = int((steps < 0).nonzero()[0])
        raise ValueError(f"cu_seqlens must be non-decreasing, but cu_seqlens[{b + 1}]={int(cu_seqlens[b + 1])} "
                         f"< cu_seqlens[{b}]={int(cu_seqlens[b])}")
    if last != total_tokens:
        raise ValueError(f"cu_seqlens must end at total_tokens={total_tokens} (q.shape[0]), got {last}")


def check_frame_ids(frame_ids: torch.Tensor | None, total_tokens: int, device: torch.device) -> None:
    if frame_ids is None:
        return
    _check_tensor("frame_ids", frame_ids)
    if frame_ids.dtype != torch.int32:
        raise ValueError(f"frame_ids must be int32, got {frame_ids.dtype}")
    if frame_ids.dim() != 1 or frame_ids.shape[0] != total_tokens:
        raise ValueError(f"frame_ids must be 1-D with one entry per token ({total_tokens}), got shape "
                         f"{tuple(frame_ids.shape)}")
    if frame_ids.device != device:
        raise ValueError(f"frame_ids is on {frame_ids.device} but q is on {device}")


def check_scale(scale) -> None:
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")


def check_varlen_args(q, k, v, cu_seqlens, frame_ids, scale) -> None:
    """All checks of :func:`pyramid_core.attention.varlen_attention`, cheapest first."""
    check_qkv(q, k, v)
    check_scale(scale)
    check_frame_ids(frame_ids, q.shape[0], q.device)
    check_cu_seqlens(cu_seqlens, q.shape[0], q.device)
