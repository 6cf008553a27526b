"""Our Triton kernels check themselves before they serve a kind of call, once per process.

The kernels are compiled for whatever GPU the process meets, with a Triton and a driver we
may never have tested. If they were wrong there, every video would be silently wrong. So the
first time the Triton backend is asked to serve a combination of (device, dtype, head_dim,
frame mask or not), a small random case runs through the kernels and through
``scaled_dot_product_attention`` in fp32 and the two are compared (the gradients too, the
first time a backward runs for that combination). A mismatch beyond :data:`TOLERANCE`, or any
error while compiling or launching, sends that combination to SDPA for the rest of the
process, with one warning that says why and how to report it. A good kernel costs one small
check per combination, not per call, and on a GPU one per machine: verdicts are kept on disk
(:mod:`.disk_cache`, keyed by GPU, torch, Triton and the kernel source), so a later process
reuses them. ``PYRAMID_ATTENTION_SELFCHECK=0`` skips the checks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from . import disk_cache
from .sdpa import varlen_attention_sdpa

ENV_VAR = "PYRAMID_ATTENTION_SELFCHECK"
SECTION = "selfcheck"
log = logging.getLogger("pyramid_core.attention")

# Largest |kernel - fp32 SDPA| accepted, per input dtype, on outputs and gradients of unit
# scale (the check's inputs are N(0, 1)). fp16/bf16 results are rounded to their dtype (unit
# roundoff 2^-11 / 2^-8) and computed from rounded inputs; a handful of roundings of values
# up to ~4 gives the bounds below. A wrong mask, scale or softmax is off by O(0.1) or more.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 1.25e-1}
GRADIENT_FACTOR = 4.0       # gradients go through one more rounded product chain

REPORT = ("please report it with the output of 'python -m pyramid_core doctor' at "
          "https://github.com/pyramid-flow-comfy/pyramid-flow/issues")


@dataclass
class Verdict:
    forward: str | None = None            # None: passed; else why it failed
    backward: str | None = None
    backward_checked: bool = False


_verdicts: dict[tuple, Verdict] = {}
_checks_run = 0


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def combination(q: torch.Tensor, frame_ids: torch.Tensor | None) -> tuple:
    """What a check covers: ``(device, dtype, head_dim, masked)``."""
    return (str(q.device), q.dtype, q.shape[-1], frame_ids is not None)


def reset() -> None:
    """Forget every verdict (tests)."""
    global _checks_run
    _verdicts.clear()
    _checks_run = 0


def _case(device: torch.device, dtype: torch.dtype, head_dim: int, masked: bool):
    """A small packed batch: sequences of 5 and 45 tokens, 2 heads, text then 3 frames."""
    generator = torch.Generator().manual_seed(20251129)
    lengths = (5, 45)
    total = sum(lengths)
    q, k, v = (torch.randn(total, 2, head_dim, generator=generator) for _ in range(3))
    cu = torch.tensor([0, lengths[0], total], dtype=torch.int32)
    frames = None
    if masked:
        per_sequence = [torch.tensor([0] * 2 + [1] * 3), torch.tensor([0] * 9 + [1] * 12 + [2] * 12 + [3] * 12)]
        frames = torch.cat(per_sequence).to(torch.int32)
    move = lambda t: t.to(device) if t is not None else None  # noqa: E731
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype), move(cu), move(frames)


def _gradients(run, q, k, v, seed: int = 1):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = run(q, k, v)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    return out.detach(), torch.autograd.grad(out, (q, k, v), weights)


def _compare(what: str, ours: torch.Tensor, reference: torch.Tensor, tolerance: float) -> str | None:
    error = (ours.float() - reference.float()).abs().max().item()
    if not error <= tolerance:                        # also catches NaN
        return f"{what} differs from fp32 SDPA by {error:.3g} (tolerance {tolerance:g})"
    return None


def _run_check(triton_attention, key: tuple, backward: bool) -> str | None:
    """None if the kernels agree with fp32 SDPA on the check case of ``key``, else why not.

    Runs outside any autocast and inference mode of the caller, with gradients on for the
    backward check.
    """
    global _checks_run
    _checks_run += 1
    autocast = torch.autocast(torch.device(key[0]).type, enabled=False)
    with torch.inference_mode(False), torch.enable_grad(), autocast:
        return _compare_case(triton_attention, key, backward)


def _compare_case(triton_attention, key: tuple, backward: bool) -> str | None:
    device, dtype, head_dim, masked = key
    q, k, v, cu, frames = _case(torch.device(device), dtype, head_dim, masked)
    tolerance = TOLERANCE.get(dtype, TOLERANCE[torch.float16])
    try:
        if not backward:
            with torch.no_grad():
                ours = triton_attention(q, k, v, cu, frames)
                reference = varlen_attention_sdpa(q.float(), k.float(), v.float(), cu, frames)
            return _compare("the forward", ours, reference, tolerance)
        ours_out, ours_grads = _gradients(lambda *t: triton_attention(*t, cu, frames), q, k, v)
        _, reference_grads = _gradients(lambda *t: varlen_attention_sdpa(*t, cu, frames),
                                        q.float(), k.float(), v.float())
    except Exception as err:  # noqa: BLE001 -- a kernel that does not compile or launch here
        return f"the kernels failed to {'run a backward' if backward else 'run'}: {type(err).__name__}: {err}"
    for name, ours, reference in zip(("dq", "dk", "dv"), ours_grads, reference_grads):
        problem = _compare(name, ours, reference, tolerance * GRADIENT_FACTOR)
        if problem:
            return problem
    return None


def verify(attention, device: torch.device | str, dtype: torch.dtype, head_dim: int = 64, masked: bool = True,
           backward: bool = False) -> str | None:
    """Run the check case through ``attention(q, k, v, cu_seqlens, frame_ids)``: None if it
    agrees with fp32 SDPA, else why not (for ``python -m pyramid_core doctor``; caches nothing)."""
    return _run_check(attention, (str(torch.device(device)), dtype, head_dim, masked), backward)


def _warn(key: tuple, problem: str, part: str) -> None:
    device, dtype, head_dim, masked = key
    log.warning("pyramid_core attention: our Triton kernels failed their self-check for %s on %s, %s, "
                "head_dim %d, %s (%s); such calls use PyTorch's SDPA from now on in this process "
                "(correct, slower). This is a bug in the kernels on this GPU/driver/Triton: %s.",
                part, device, str(dtype).removeprefix("torch."), head_dim,
                "frame mask" if masked else "no mask", problem, REPORT)


def _machine(device: str) -> str | None:
    """The disk cache's machine key of a CUDA device; None elsewhere (nothing is stored)."""
    return disk_cache.machine_key(torch.device(device)) if torch.device(device).type == "cuda" else None


def _checked(triton_attention, key: tuple, backward: bool) -> str | None:
    """The check's result for ``key``: from the disk cache of this GPU when an earlier process
    ran it (:mod:`.disk_cache`; CUDA only), else run now and stored there."""
    device, dtype, head_dim, masked = key
    machine = _machine(device)
    if machine is None:
        return _run_check(triton_attention, key, backward)
    label = (f"{str(dtype).removeprefix('torch.')} d{head_dim} {'frame-mask' if masked else 'no-mask'} "
             f"{'backward' if backward else 'forward'}")
    stored = disk_cache.shared.get(machine, SECTION, label)
    if isinstance(stored, dict) and "problem" in stored:
        return stored["problem"]
    problem = _run_check(triton_attention, key, backward)
    disk_cache.shared.put(machine, SECTION, label, {"problem": problem})
    return problem


def forward_ok(triton_attention, q: torch.Tensor, frame_ids: torch.Tensor | None) -> bool:
    """Whether the Triton forward may serve this kind of call (checks it the first time)."""
    if not enabled():
        return True
    key = combination(q, frame_ids)
    verdict = _verdicts.get(key)
    if verdict is None:
        verdict = _verdicts[key] = Verdict(forward=_checked(triton_attention, key, backward=False))
        if verdict.forward:
            _warn(key, verdict.forward, "the forward")
    return verdict.forward is None


def backward_ok(triton_attention, q: torch.Tensor, frame_ids: torch.Tensor | None) -> bool:
    """Whether the Triton backward may serve this kind of call (checks it the first time)."""
    if not enabled():
        return True
    key = combination(q, frame_ids)
    verdict = _verdicts.setdefault(key, Verdict())
    if not verdict.backward_checked:
        verdict.backward_checked = True
        verdict.backward = _checked(triton_attention, key, backward=True)
        if verdict.backward:
            _warn(key, verdict.backward, "the backward")
    return verdict.backward is None


def checks_run() -> int:
    """How many checks ran in this process (forward and backward ones)."""
    return _checks_run
