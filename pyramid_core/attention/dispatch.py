"""Backend selection for :func:`varlen_attention`.

Backends (all with the same semantics; :mod:`.checks` validates once for all of them):

* ``"sdpa"``: one ``torch.nn.functional.scaled_dot_product_attention`` per sequence with a
  dense boolean frame mask. Everywhere; the reference the others are tested against.
* ``"triton"``: our kernels (:mod:`.triton_varlen`); CUDA tensors, or CPU tensors when the
  process runs Triton's interpreter (``TRITON_INTERPRET=1`` set before first use).
* ``"flex"``: PyTorch's ``flex_attention`` with a block mask of the sequences and frames
  (:mod:`.flex`); compiled on CUDA, eager (slow, for tests) elsewhere.
* ``"flash_attn"``: ``flash_attn_varlen_func``, when installed; mask-free calls only.
* ``"sage"``: ``sageattn_varlen`` (SageAttention), when installed; mask-free inference only.
* ``"auto"``: the process default (below); if that is ``"auto"`` too, on CUDA the fastest of
  the backends that can serve the call, timed once per kind of call and machine and
  remembered on disk (:mod:`.chooser`, :mod:`.disk_cache`); ``"sdpa"`` off CUDA.
  :func:`resolve_backend` reports the choice made without timing: ``"triton"`` for CUDA
  fp16/bf16 tensors with head_dim <= 128 on sm_80 or newer, ``"sdpa"`` otherwise.

Choosing a backend:

1. ``backend=`` of the call, when not ``"auto"``: strict; a ``ValueError`` says why it cannot
   run the call.
2. Otherwise the process default: :func:`set_default_backend` (or the :func:`default_backend`
   context manager), else the ``PYRAMID_ATTENTION_BACKEND`` environment variable, else
   ``"auto"``. A default that is not installed is an error when it is set (or, for the
   environment variable, on first use); a call it cannot serve (a frame mask for flash_attn,
   CPU tensors for triton, ...) falls back to the ``"auto"`` choice, so one process-wide switch
   never breaks the models' masked calls; the first fallback for each reason is logged.

The Triton kernels check themselves against SDPA the first time they serve a kind of call
(:mod:`.selfcheck`): a kind they get wrong on this machine goes to SDPA from then on, with one
warning (or a ``ValueError`` when ``backend="triton"`` was asked for by name).
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from . import checks, chooser, disk_cache, external, flex, selfcheck
from .sdpa import varlen_attention_sdpa

BACKENDS = ("auto", "sdpa", "triton", "flex", "flash_attn", "sage")
ENV_VAR = "PYRAMID_ATTENTION_BACKEND"

_default_backend: str | None = None
_fallbacks_told: set[tuple[str, str]] = set()          # (default backend, reason) already logged
log = logging.getLogger("pyramid_core.attention")


# ---------------------------------------------------------------------------------------------
# Process-wide default
# ---------------------------------------------------------------------------------------------


def _check_name(name: str, what: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{what}={name!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    return name


def set_default_backend(name: str | None) -> None:
    """Set the backend used by calls that pass ``backend="auto"``; ``None`` resets it."""
    global _default_backend
    if name is not None:
        _check_name(name, "backend")
        reason = _installed_reason(name)
        if reason is not None:
            raise ValueError(f"cannot make {name!r} the default attention backend: {reason}")
    _default_backend = name


def get_default_backend() -> str:
    """The process default: :func:`set_default_backend`, else ``$PYRAMID_ATTENTION_BACKEND``, else "auto"."""
    if _default_backend is not None:
        return _default_backend
    name = _check_name(os.environ.get(ENV_VAR, "auto").strip() or "auto", ENV_VAR)
    reason = _installed_reason(name)
    if reason is not None:
        raise ValueError(f"{ENV_VAR}={name!r} cannot be used: {reason}")
    return name


@contextlib.contextmanager
def default_backend(name: str | None):
    """Temporarily set the process default: ``with default_backend("sdpa"): ...``."""
    previous = _default_backend
    set_default_backend(name)
    try:
        yield
    finally:
        globals()["_default_backend"] = previous


# ---------------------------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------------------------


def _installed_reason(name: str) -> str | None:
    """Why ``name`` cannot run at all in this process (None if it may)."""
    if name == "triton" and not external.installed("triton"):
        return "the triton package is not installed"
    if name == "flex":
        return flex.flex_unavailable_reason()
    if name == "flash_attn":
        return external.flash_attn_unavailable_reason()
    if name == "sage":
        return external.sage_unavailable_reason()
    return None


def _triton_module():
    from . import triton_varlen  # imported lazily: Triton reads TRITON_INTERPRET at this import

    return triton_varlen


def _triton_reason(q: torch.Tensor) -> str | None:
    """Why our Triton kernels cannot run this call (None when they can)."""
    reason = _installed_reason("triton")
    if reason is not None:
        return reason
    tv = _triton_module()
    if q.shape[-1] > tv.MAX_HEAD_DIM:
        return f"head_dim {q.shape[-1]} > {tv.MAX_HEAD_DIM}"
    if q.dtype not in tv.SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not supported (float16, bfloat16, float32)"
    if tv.is_interpreting():
        if q.device.type != "cpu":
            return "the Triton interpreter (TRITON_INTERPRET=1) runs on CPU tensors only"
        if q.dtype == torch.bfloat16:
            return "the Triton interpreter cannot compute in bfloat16"
        return None
    if q.device.type != "cuda":
        return f"needs CUDA tensors, got {q.device} (or TRITON_INTERPRET=1 for CPU tests)"
    return None


def _call_reason(name: str, q: torch.Tensor, frame_ids) -> str | None:
    if name == "sdpa":
        return None
    if name == "triton":
        return _triton_reason(q)
    if name == "flex":
        return flex.flex_unavailable_reason(q, frame_ids)
    if name == "flash_attn":
        return external.flash_attn_unavailable_reason(q, frame_ids)
    if name == "sage":
        return external.sage_unavailable_reason(q, frame_ids)
    raise AssertionError(name)


def _triton_fits(q: torch.Tensor) -> bool:
    """Our kernels are a candidate: CUDA fp16/bf16 on sm_80 or newer (what they are tuned for)."""
    return (q.device.type == "cuda" and torch.version.hip is None
            and q.dtype in (torch.float16, torch.bfloat16)
            and torch.cuda.get_device_capability(q.device) >= (8, 0)
            and _triton_reason(q) is None)


def _auto_choice(q: torch.Tensor) -> str:
    """The choice made without timing: our kernels where they fit, SDPA elsewhere."""
    return "triton" if _triton_fits(q) else "sdpa"


def _candidates(q: torch.Tensor, frame_ids) -> list[str]:
    """The backends ``auto`` times for a CUDA call (none off CUDA: SDPA is the only choice)."""
    if q.device.type != "cuda" or torch.version.hip is not None:
        return []
    names = ["triton"] if _triton_fits(q) else []
    names.append("sdpa")
    if q.dtype in (torch.float16, torch.bfloat16) and flex.flex_unavailable_reason(q, frame_ids) is None:
        names.append("flex")
    if _installed_reason("flash_attn") is None and external.flash_attn_unavailable_reason(q, frame_ids) is None:
        names.append("flash_attn")
    return names


def _fastest(q, k, v, cu_seqlens, frame_ids, scale) -> str:
    """``auto``'s backend for this call: the measured fastest on this machine
    (:mod:`.chooser`), or :func:`_auto_choice` where nothing can be timed."""
    names = _candidates(q, frame_ids)
    if len(names) < 2 or (q.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return _auto_choice(q)
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    kind = chooser.CallKind.of(q, k, cu_seqlens, frame_ids, training)
    machine = disk_cache.machine_key(q.device)
    known = chooser.shared.known(machine, kind)
    if known in names:
        return known
    if "triton" in names:
        triton_attention = _triton_module().varlen_attention_triton
        passed = selfcheck.forward_ok(triton_attention, q, frame_ids) and (
            not training or selfcheck.backward_ok(triton_attention, q, frame_ids))
        if not passed:
            names.remove("triton")
    runs = {name: _timing_run(name, q, k, v, cu_seqlens, frame_ids, scale, training) for name in names}
    return chooser.shared.choose(machine, kind, runs, q.device)


def _timing_run(name: str, q, k, v, cu_seqlens, frame_ids, scale, training: bool):
    """A call of ``name`` on copies of the caller's inputs, with a backward when training."""
    if not training:
        def run():
            with torch.no_grad():
                return _run(name, q, k, v, cu_seqlens, frame_ids, scale)
        return run

    inputs = [t.detach().requires_grad_() for t in (q, k, v)]

    def run_with_backward():
        with torch.enable_grad():
            out = _run(name, *inputs, cu_seqlens, frame_ids, scale)
            out.backward(torch.ones_like(out))
    return run_with_backward


def available_backends(q: torch.Tensor | None = None, frame_ids=None) -> dict[str, str | None]:
    """``{backend: None if usable else the reason}``, for this process or for one call."""
    out = {}
    for name in BACKENDS[1:]:
        reason = _installed_reason(name)
        if reason is None and q is not None:
            reason = _call_reason(name, q, frame_ids)
        out[name] = reason
    return out


def resolve_backend(backend: str, q: torch.Tensor, frame_ids=None) -> str:
    """The concrete backend that runs a call (see the module docstring for the rules)."""
    _check_name(backend, "backend")
    if backend != "auto":
        reason = _installed_reason(backend) or _call_reason(backend, q, frame_ids)
        if reason is not None:
            raise ValueError(f"attention backend {backend!r} is unavailable for this call: {reason}")
        return backend
    preferred = get_default_backend()
    if preferred == "auto":
        return _auto_choice(q)
    reason = _call_reason(preferred, q, frame_ids)
    if reason is None:
        return preferred
    chosen = _auto_choice(q)
    if (preferred, reason) not in _fallbacks_told:
        _fallbacks_told.add((preferred, reason))
        log.warning("pyramid_core attention: the default backend %r cannot run some calls (%s); those use %r",
                    preferred, reason, chosen)
    return chosen


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


# Compiled models (pyramid_core.compile) call this eagerly: its checks read tensors on the host
# and its backends pick themselves at run time, neither of which a graph can hold.
@torch.compiler.disable
def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    frame_ids: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention over packed sequences of different lengths.

    Args:
        q: ``(total_tokens, H, D)``; sequence ``b`` is rows ``cu_seqlens[b]:cu_seqlens[b + 1]``.
        k, v: ``(total_tokens, H_kv, D)``, ``H_kv`` dividing ``H`` (grouped-query heads).
        cu_seqlens: int32 ``(num_seqs + 1,)`` offsets, starting at 0, non-decreasing, ending
            at ``total_tokens``; on q's device.
        frame_ids: optional int32 ``(total_tokens,)``; token i attends token j of its own
            sequence iff ``frame_ids[j] <= frame_ids[i]`` (text tokens carry frame 0).
            Without it every token attends its whole sequence.
        scale: softmax scale, default ``D ** -0.5``.
        backend: "auto" (the process default, see :mod:`.dispatch`), "sdpa", "triton",
            "flex", "flash_attn" or "sage".

    Returns:
        ``(total_tokens, H, D)`` in q's dtype; differentiable in q, k and v (except "sage").

    Raises:
        ValueError: naming the bad argument (see :mod:`.checks` for what is checked), or the
            reason an explicitly requested backend cannot run the call.
    """
    checks.check_varlen_args(q, k, v, cu_seqlens, frame_ids, scale)
    if backend == "auto" and get_default_backend() == "auto":
        name = _fastest(q, k, v, cu_seqlens, frame_ids, scale)
    else:
        name = resolve_backend(backend, q, frame_ids)
    if name == "triton":
        triton_attention = _triton_module().varlen_attention_triton
        if selfcheck.forward_ok(triton_attention, q, frame_ids):
            return triton_attention(q, k, v, cu_seqlens, frame_ids, scale)
        if backend == "triton":                      # asked for by name: say so instead of falling back
            raise ValueError("attention backend 'triton' failed its self-check for this kind of call on this "
                             "machine (see the warning above); use backend='sdpa' or 'auto'")
        name = "sdpa"
    return _run(name, q, k, v, cu_seqlens, frame_ids, scale)


def _run(name: str, q, k, v, cu_seqlens, frame_ids, scale) -> torch.Tensor:
    """One call on the named backend (its checks and choice already made)."""
    if name == "triton":
        return _triton_module().varlen_attention_triton(q, k, v, cu_seqlens, frame_ids, scale)
    if name == "flex":
        return flex.varlen_attention_flex(q, k, v, cu_seqlens, frame_ids, scale)
    if name == "flash_attn":
        return external.varlen_attention_flash_attn(q, k, v, cu_seqlens, frame_ids, scale)
    if name == "sage":
        return external.varlen_attention_sage(q, k, v, cu_seqlens, frame_ids, scale)
    return varlen_attention_sdpa(q, k, v, cu_seqlens, frame_ids, scale)
