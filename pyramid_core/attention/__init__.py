"""The one attention entry point of pyramid_core.

Every model and the trainer call these two functions; backends (torch SDPA everywhere,
our Triton kernels on CUDA, flash-attn / SageAttention when installed) sit behind them with
identical semantics.

* :func:`attention` -- batched dense attention, ``q, k, v: (B, H, L, D)``; torch SDPA.
* :func:`varlen_attention` -- packed variable-length sequences, ``q, k, v: (total, H, D)``,
  with an optional frame-causal mask given by per-token frame ids.

Which backend runs a varlen call: the ``backend=`` argument, else the process default set by
:func:`set_default_backend` / :func:`default_backend` / ``PYRAMID_ATTENTION_BACKEND``, else
"auto" (our Triton kernels for CUDA fp16/bf16 on sm_80+, SDPA otherwise); see
:mod:`pyramid_core.attention.dispatch`. Triton is imported only when its backend is first used.
"""

from .dispatch import (
    BACKENDS,
    ENV_VAR,
    available_backends,
    default_backend,
    get_default_backend,
    resolve_backend,
    set_default_backend,
    varlen_attention,
)
from .sdpa import attention, frame_causal_mask

__all__ = [
    "attention",
    "varlen_attention",
    "frame_causal_mask",
    "set_default_backend",
    "get_default_backend",
    "default_backend",
    "available_backends",
    "resolve_backend",
    "BACKENDS",
    "ENV_VAR",
]
