"""Metric logging: a CSV file always (rank 0), TensorBoard too when it is installed.

The CSV has fixed columns declared up front, so rows from before and after the GAN starts,
or from before and after a resume, line up. On resume, rows past the checkpoint's step
(written by the run that died) are dropped, so the file reads as one continuous run.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

log = logging.getLogger("pyramid_core.training")


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as floats (empty cells are skipped)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


class MetricWindow:
    """Means of per-step metrics over one logging interval (missing values count as 0)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.skipped = 0
        self.start = time.perf_counter()

    def add(self, logs: dict[str, float], skipped: int = 0, **extra: float) -> None:
        for k, v in {**logs, **extra}.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.steps += 1
        self.skipped += skipped

    def mean(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}

    def seconds(self, since: float | None = None) -> float:
        """Wall seconds per step since ``since`` (default: the window's creation)."""
        return (time.perf_counter() - (self.start if since is None else since)) / max(self.steps, 1)


class MetricLogger:
    """Append one row per logged step to ``directory/metrics.csv``.

    Args:
        columns: metric names after ``step``; unknown names passed to :meth:`log` are ignored.
        enabled: False on ranks other than 0 (every call is then a no-op).
        resume_step: keep only rows with ``step <= resume_step`` of an existing file.
        tensorboard: also write TensorBoard events under ``directory/tb`` if the package exists.
    """

    def __init__(self, directory: str | Path, columns: list[str], enabled: bool = True,
                 resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.columns = ["step", *columns]
        self.enabled = enabled
        self.path = Path(directory) / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prepare(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency
                log.info("tensorboard is not installed; metrics go to %s only", self.path)
            else:
                self.writer = SummaryWriter(str(self.path.parent / "tb"), purge_step=resume_step)

    def _prepare(self, resume_step: int | None) -> None:
        kept = []
        if self.path.is_file() and resume_step is not None:
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames == self.columns:
                    kept = [row for row in reader if float(row["step"]) <= resume_step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(kept)
        tmp.replace(self.path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: f"{v:.8g}" for k, v in metrics.items() if k in self.columns}}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
