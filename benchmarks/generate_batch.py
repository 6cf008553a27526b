"""Generation at scale on this machine: batch throughput over processes, memory per rank of
sequence parallelism.

1. **Batch throughput.** The tiny stand-in checkpoints (scripts/tiny_checkpoints.py), a batch
   of ``--jobs`` text-to-video jobs (128x64, 17 frames, 1 step per stage), run by
   ``torchrun --nproc_per_node N -m pyramid_core generate-batch`` for N = 1 and 2 in
   alternating rounds. Reported: wall seconds of the whole launch (start-up included) and jobs
   per second over the span in which jobs ran (from results.jsonl). On a 2-core CPU expect no
   speed-up: this proves the mechanics; on GPUs each rank has its own device.
2. **Memory per rank of ``--parallel sequence``.** The medium miniFLUX of dit_forward.py (4 + 4
   blocks, 8 heads x 64, fp32) on its 384p top-stage case (1,260 image tokens with history,
   frame-causal mask, CFG batch of 2): one forward alone, then over 2 and 4 ranks. Reported
   per rank: peak resident memory above what the process held before the forward (Linux
   VmHWM, reset through /proc/self/clear_refs), and the forward's seconds.

Prints one JSON line per case.

    python benchmarks/generate_batch.py [--jobs 8] [--rounds 2] [--memory-ranks 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import child_env  # noqa: E402 -- beside this file


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(port), *args]
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**child_env(), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return done


# --------------------------------------------------------------------------------------
# 1. batch throughput
# --------------------------------------------------------------------------------------

def batch_throughput(jobs: int, rounds: int) -> None:
    from tiny_checkpoints import tiny_generate_options

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        options = tiny_generate_options(root / "models", frames=17)
        (root / "jobs.jsonl").write_text("".join(
            json.dumps({"id": f"job-{i}", "prompt": f"a red cat runs {i}", "seed": i}) + "\n" for i in range(jobs)))
        walls, rates = {1: [], 2: []}, {1: [], 2: []}
        for round_ in range(rounds):
            for nproc in (1, 2):
                out = root / f"out-{nproc}-{round_}"
                start = time.perf_counter()
                torchrun(nproc, "-m", "pyramid_core", "generate-batch", "--prompts", str(root / "jobs.jsonl"),
                         "--out-dir", str(out), *options)
                walls[nproc].append(time.perf_counter() - start)
                records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
                span = max(r["finished_at"] for r in records) - min(r["finished_at"] - r["seconds"] for r in records)
                rates[nproc].append(len(records) / span)
        for nproc in (1, 2):
            print(json.dumps({"case": f"generate-batch-{nproc}-process", "jobs": jobs,
                              "wall_seconds_median": round(statistics.median(walls[nproc]), 2),
                              "jobs_per_second_median": round(statistics.median(rates[nproc]), 3),
                              "speedup_vs_1_process": round(statistics.median(rates[nproc])
                                                            / statistics.median(rates[1]), 3),
                              "cpus": os.cpu_count()}), flush=True)


# --------------------------------------------------------------------------------------
# 2. memory per rank of sequence parallelism
# --------------------------------------------------------------------------------------

def memory_worker(out_dir: str) -> None:
    """Under torchrun: one forward of the medium DiT, sequence parallel over the launch when it has
    more than one rank; writes rank<r>.json."""
    import torch

    from dit_forward import CASES, MEDIUM, make_inputs
    from memory import peak_above
    from pyramid_core.distributed import cleanup, init_distributed
    from pyramid_core.models import PyramidFluxTransformer
    from pyramid_core.parallel import make_groups, parallelize, plan_parallel

    info = init_distributed("cpu")
    torch.manual_seed(0)
    dit = PyramidFluxTransformer(**MEDIUM).eval()
    if info.distributed:
        dit = parallelize(dit, make_groups(plan_parallel("sequence", info.world_size, one_video=True), info))
    small = make_inputs(CASES["64-tokens"], torch.device("cpu"), torch.float32, dit.config)
    inputs = make_inputs(CASES["1260-tokens-384p-top-stage-with-history"], torch.device("cpu"), torch.float32,
                         dit.config)
    with torch.no_grad():
        dit(**small)                                             # first-call allocations out of the way
        start = time.perf_counter()
        _, peak, exact = peak_above(lambda: dit(**inputs))
        seconds = time.perf_counter() - start
    Path(out_dir, f"rank{info.rank}.json").write_text(json.dumps(
        {"rank": info.rank, "peak_mib_above_model": round(peak, 1), "seconds": round(seconds, 3),
         "peak_reset": exact}))
    cleanup()


def sequence_memory(rank_counts: list[int]) -> None:
    baseline = None
    for ranks in rank_counts:
        with tempfile.TemporaryDirectory() as tmp:
            torchrun(ranks, str(Path(__file__).resolve()), "--memory-worker", tmp)
            per_rank = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(ranks)]
        peak = max(r["peak_mib_above_model"] for r in per_rank)
        baseline = baseline if baseline is not None else peak
        print(json.dumps({"case": "medium-dit-384p-top-stage-forward", "mode": "alone" if ranks == 1 else "sequence",
                          "ranks": ranks, "peak_mib_per_rank": [r["peak_mib_above_model"] for r in per_rank],
                          "peak_vs_one_process": round(peak / baseline, 3),
                          "seconds": max(r["seconds"] for r in per_rank),
                          "peak_measured_exactly": all(r["peak_reset"] for r in per_rank)}), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory-ranks", default="1,2,4", help="rank counts for the memory case, 1 first")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(args.memory_worker)
        return 0
    batch_throughput(args.jobs, args.rounds)
    sequence_memory([int(v) for v in args.memory_ranks.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
