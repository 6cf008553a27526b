"""Skip optimizer updates that are not finite; stop a run that keeps producing them.

Low precision is not the same on every machine: a bf16 step that is finite on one CPU or GPU
can overflow or lose a norm to rounding on another (AMX tiles, tensor cores). One such step
must not cost the run: Adam turns a single NaN gradient into NaN weights, and every later
step, EMA and checkpoint inherits them. So every trainer asks a :class:`NonFiniteGuard`
before each optimizer update:

* :meth:`NonFiniteGuard.check` takes the step's loss and gradient norm. If any is NaN or
  infinite on any rank (one all-reduce, so every rank takes the same decision), the caller
  skips the update: no optimizer, LR-scheduler, EMA or step-count change. The skip is logged
  with the step and counted; after ``max_consecutive`` skips in a row it raises
  :class:`NonFiniteError`, naming the last good checkpoint.
* :meth:`NonFiniteGuard.check_weights` runs before every checkpoint and export: weights that
  are not finite (an update from finite gradients can still overflow) are never written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist

from ..distributed import DistInfo

log = logging.getLogger("pyramid_core.training")


def clipped_grad_norm(params, grad_clip: float) -> torch.Tensor:
    """The gradients' total norm before clipping (NaN or inf when they are unusable: what the
    guard checks); clips them to ``grad_clip`` when it is above 0."""
    return torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))


class NonFiniteError(RuntimeError):
    """A run stopped because its updates or weights are no longer finite."""


def _not_finite(tensors: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A 0-d float tensor on ``device``: 1 if any element of any tensor is NaN or infinite, else 0."""
    bad = torch.zeros((), device=device)
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t   # FSDP shards: each rank checks its own
        bad = torch.maximum(bad, (~torch.isfinite(t.detach())).any().float().to(device))
    return bad


class NonFiniteGuard:
    """Decides, identically on every rank, whether an update may be applied.

    Args:
        what: the updated model, for the messages (``"generator"``, ``"discriminator"``, ``"DiT"``).
        max_consecutive: skips in a row after which the run stops.
        info: this process's place in the run (the decision is all-reduced over its ranks).
        last_checkpoint: returns the newest checkpoint on disk (or None), named when the run stops.
    """

    def __init__(self, what: str, max_consecutive: int, info: DistInfo, last_checkpoint=lambda: None) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive={max_consecutive}: must be at least 1")
        self.what = what
        self.max_consecutive = max_consecutive
        self.info = info
        self.last_checkpoint = last_checkpoint
        self.consecutive = 0   # skips since the last applied update
        self.total = 0         # skips in this process's lifetime
        self.since_log = 0     # skips since the caller last read :meth:`take_count`

    def _any_rank(self, tensors: Iterable[torch.Tensor]) -> bool:
        """True if any tensor holds NaN or inf on any rank (one all-reduce: the same answer everywhere)."""
        bad = _not_finite(tensors, self.info.device)
        if self.info.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad.item())

    def check(self, step: int, **values: torch.Tensor | float) -> bool:
        """True when every value (loss, gradient norm, ...) is finite on every rank.

        Otherwise the skip is logged and counted, and False tells the caller to drop the
        update. ``step`` is the step being attempted (1-based, as in the logs). Raises
        :class:`NonFiniteError` once ``max_consecutive`` updates in a row were skipped.
        """
        tensors = [v if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for v in values.values()]
        if not self._any_rank(tensors):
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        self.since_log += 1
        shown = ", ".join(f"{k} {float(v):.4g}" for k, v in values.items())
        log.warning("step %d: %s update skipped, not finite on this or another rank (here: %s); "
                    "%d in a row, %d in all; the run stops after %d in a row", step, self.what, shown,
                    self.consecutive, self.total, self.max_consecutive)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"step {step}: {self.consecutive} {self.what} updates in a row were not finite, so the run stopped "
                f"(max_nonfinite_steps={self.max_consecutive}). {self._resume_hint()}")
        return False

    def check_weights(self, step: int, tensors: Iterable[torch.Tensor], what: str = "weights") -> None:
        """Raise :class:`NonFiniteError` (on every rank) if any of ``tensors`` is not finite:
        called before a checkpoint or export is written, so none ever holds NaN or inf."""
        if self._any_rank(tensors):
            raise NonFiniteError(f"step {step}: the {self.what} {what} are not finite, so nothing was written. "
                                 f"{self._resume_hint()}")

    def take_count(self) -> int:
        """Skips since the last call (for the metrics row of a logging interval)."""
        count, self.since_log = self.since_log, 0
        return count

    def _resume_hint(self) -> str:
        last = self.last_checkpoint()
        where = (f"The last good checkpoint is {Path(last)}: resume from it (resume=auto) with a lower lr, "
                 if last is not None else "No checkpoint was written yet: start again with a lower lr, ")
        return where + "mixed_precision='no' or a smaller grad_clip."
