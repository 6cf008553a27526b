"""Running a batch: share the jobs out over the video groups, skip what is done, record results.

* Rank 0 decides which jobs are left (a job is done when all its output files exist; each is
  written atomically, the video last) and broadcasts the list, so every rank agrees.
* The jobs left are shared out longest first, each to the group with the least work so far
  (frames x pixels); each group runs its share ordered by prompt, so a prompt repeated over
  seeds is encoded once.
* Only a group's leader decodes and writes, and only its own jobs' files: ranks never write
  the same file. A failed job is recorded and the batch goes on.
* Each leader appends one line per finished job to ``OUT/.results/rank-<rank>.jsonl``. At the
  end rank 0 writes ``OUT/results.jsonl``: one line per job of the file, the latest record of
  each (this run's or an earlier one's), atomically. A rerun therefore resumes a killed batch.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from ..parallel import ParallelGroups
from .jobs import Job

RECORDS = ".results"


def share_out(jobs: list[Job], workers: int) -> list[list[Job]]:
    """``jobs`` split into ``workers`` lists of about equal cost (longest first to the least
    loaded), each ordered by prompt, then file line."""
    shares, loads = [[] for _ in range(workers)], [0.0] * workers
    for job in sorted(jobs, key=lambda j: (-j.cost, j.line)):
        least = min(range(workers), key=lambda w: (loads[w], w))
        shares[least].append(job)
        loads[least] += job.cost
    return [sorted(share, key=lambda j: (j.text_key, j.line)) for share in shares]


def jobs_left(jobs: list[Job], groups: ParallelGroups) -> list[Job]:
    """Jobs whose outputs are not all there yet, as rank 0 sees the output folder."""
    left = [job.id for job in jobs if not job.done()] if groups.info.is_main else None
    if groups.info.distributed:
        box = [left]
        dist.broadcast_object_list(box, src=0)
        left = box[0]
    wanted = set(left)
    return [job for job in jobs if job.id in wanted]


def save_latents(path: Path, latents: torch.Tensor, job: Job, variant: str) -> None:
    """Latents ``(1, 16, T, h, w)`` as safetensors (key ``latents``; the job in the metadata), atomically."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    metadata = {"job": json.dumps(job.describe()), "variant": variant, "format": "pt"}
    save_file({"latents": latents.detach().float().cpu().contiguous()}, str(tmp), metadata=metadata)
    tmp.replace(path)


class Records:
    """This leader's results file, one JSON line per finished job, flushed line by line."""

    def __init__(self, out_dir: Path, rank: int):
        folder = out_dir / RECORDS
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"rank-{rank:05d}.jsonl"

    def add(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def read_records(out_dir: Path) -> dict[str, dict]:
    """The latest record of every job id in ``out_dir/.results`` (a line cut short by a kill is skipped)."""
    latest: dict[str, dict] = {}
    for path in sorted((out_dir / RECORDS).glob("rank-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("id") is None:
                continue
            previous = latest.get(record["id"])
            if previous is None or record.get("finished_at", 0) >= previous.get("finished_at", 0):
                latest[record["id"]] = record
    return latest


def write_results(jobs: list[Job], out_dir: Path) -> Path:
    """``out_dir/results.jsonl``: one line per job in file order (id, status, seconds, output, error)."""
    records = read_records(out_dir)
    lines = []
    for job in jobs:
        record = records.get(job.id)
        if record is None or (record["status"] != "ok" and job.done()):
            status = "ok" if job.done() else "not run"
            record = {"id": job.id, "status": status, "seconds": None,
                      "output": str(job.output) if job.done() else None, "error": None}
        keys = ("id", "status", "seconds", "output", "error", "rank", "finished_at")
        lines.append(json.dumps({k: record[k] for k in keys if k in record}))
    path = out_dir / "results.jsonl"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)
    return path


def run_batch(jobs: list[Job], out_dir: Path, groups: ParallelGroups, generate_one,
              log=lambda text: print(text, file=sys.stderr, flush=True)) -> dict:
    """Run this rank's share of ``jobs``.

    Args:
        generate_one: ``generate_one(job)`` samples the job on every rank of the group; on the
            leader it also decodes and writes ``job.output`` (and the latents when ``job.latents``).
            An exception fails that job only.
        log: where the one-line-per-job progress goes (leaders only).

    Returns:
        Counts over the whole launch on rank 0 (``ok``, ``failed``, ``already_done``), this
        rank's own on the others.
    """
    left = jobs_left(jobs, groups)
    share = share_out(left, groups.num_workers)[groups.worker]
    records = Records(out_dir, groups.info.rank) if groups.leader else None
    counts = {"ok": 0, "failed": 0, "already_done": len(jobs) - len(left) if groups.info.is_main else 0}
    tag = f"[group {groups.worker + 1}/{groups.num_workers}] " if groups.num_workers > 1 else ""
    for index, job in enumerate(share, start=1):
        start = time.perf_counter()
        error: Optional[str] = None
        try:
            generate_one(job)
        except Exception as err:  # noqa: BLE001 -- a failed job is recorded; the batch goes on
            error = f"{type(err).__name__}: {err}"
            if not isinstance(err, (ValueError, FileNotFoundError, MemoryError)):
                error += "\n" + traceback.format_exc(limit=-3)
        seconds = round(time.perf_counter() - start, 3)
        counts["failed" if error else "ok"] += 1
        if records is not None:
            records.add({"id": job.id, "status": "failed" if error else "ok", "seconds": seconds,
                         "output": None if error else str(job.output), "error": error,
                         "rank": groups.info.rank, "finished_at": time.time()})
            outcome = f"FAILED ({error.splitlines()[0]})" if error else f"ok -> {job.output}"
            log(f"{tag}{job.id}: {outcome} in {seconds:.1f} s ({index}/{len(share)})")
    if groups.info.distributed:
        own = [counts["ok"], counts["failed"]] if groups.leader else [0, 0]   # a group's jobs count once
        totals = torch.tensor(own, dtype=torch.float64, device=groups.info.device)
        dist.all_reduce(totals)
        counts["ok"], counts["failed"] = (int(v) for v in totals.tolist())
    if groups.info.is_main:
        write_results(jobs, out_dir)
    return counts
