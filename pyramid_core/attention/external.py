"""Optional third-party backends: flash-attn and SageAttention, used only when asked for.

Neither can express the frame-causal mask (flash-attn knows only plain causal masks, Sage
likewise), so both serve mask-free calls only. SageAttention quantises Q/K to int8 (its
results differ from exact attention by its quantisation error) and has no backward.
Both need CUDA tensors in fp16/bf16 and a host-side ``max_seqlen`` (one sync per call).
"""

from __future__ import annotations

import functools
import importlib.util

import torch


@functools.lru_cache(maxsize=None)
def installed(module: str) -> bool:
    """Whether ``module`` can be imported, looked up once per process: ``auto`` asks on every
    call (every layer), and a package search reads the filesystem."""
    return importlib.util.find_spec(module) is not None


def flash_attn_unavailable_reason(q: torch.Tensor | None = None, frame_ids=None) -> str | None:
    """Why flash-attn cannot run this call (None when it can)."""
    if not installed("flash_attn"):
        return "the flash_attn package is not installed"
    return _cuda_half_reason("flash_attn", q, frame_ids)


def sage_unavailable_reason(q: torch.Tensor | None = None, frame_ids=None) -> str | None:
    """Why SageAttention cannot run this call (None when it can)."""
    if not installed("sageattention"):
        return "the sageattention package is not installed"
    reason = _cuda_half_reason("sage", q, frame_ids)
    if reason is None and q is not None and torch.is_grad_enabled() and q.requires_grad:
        reason = "SageAttention has no backward; use it for inference only"
    return reason


def _cuda_half_reason(name: str, q, frame_ids) -> str | None:
    if q is None:
        return None
    if frame_ids is not None:
        return f"{name} cannot express the frame-causal mask (frame_ids); use 'triton' or 'sdpa'"
    if q.device.type != "cuda":
        return f"{name} needs CUDA tensors, got {q.device}"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"{name} needs float16 or bfloat16, got {q.dtype}"
    return None


def _max_seqlen(cu_seqlens: torch.Tensor) -> int:
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def varlen_attention_flash_attn(q, k, v, cu_seqlens, frame_ids=None, scale=None):
    from flash_attn import flash_attn_varlen_func

    max_len = _max_seqlen(cu_seqlens)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len,
                                  dropout_p=0.0, softmax_scale=scale, causal=False)


def varlen_attention_sage(q, k, v, cu_seqlens, frame_ids=None, scale=None):
    from sageattention import sageattn_varlen

    max_len = _max_seqlen(cu_seqlens)
    if k.shape[1] != q.shape[1]:  # Sage's varlen kernels take equal head counts
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return sageattn_varlen(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, is_causal=False, sm_scale=scale)
