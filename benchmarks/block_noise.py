"""Block noise: one vectorised draw vs the reference's one-block-at-a-time loop.

The reference samples stage-transition noise with a Python loop of
``MultivariateNormal.sample()`` calls, one per 2x2 block; ``pyramid_core.noise.block_noise``
draws all blocks at once with the machine-independent ``pyramid_core.rng.standard_normal``
and the closed-form factor. ``randn_matmul_s`` times the naive vectorisation (``torch.randn``
and a matmul, whose bits depend on the CPU) for the cost of that portability. Cases are the
latents where block noise is drawn at the top stage of the 384p and 768p models (one latent
frame, 16 channels).
Prints one JSON line per case. If the loop would take longer than ``--loop-budget``
seconds, it is timed on a prefix of the blocks and extrapolated (``loop_extrapolated``).

    python benchmarks/block_noise.py [--device cuda] [--repeats 5] [--threads 1]

On a CPU shared with other work, prefer ``--threads 1``: the vectorised path's matmul and
copy are parallel ops whose threads stall when another process holds the second core,
while the reference loop is single-threaded anyway.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyramid_core.noise import block_noise, block_noise_cholesky  # noqa: E402

CASES = {
    # name: latent shape (B, C, T, H, W) at the stage where the block noise is drawn
    "384p-stage1": (1, 16, 1, 24, 40),
    "384p-stage2": (1, 16, 1, 48, 80),
    "768p-stage1": (1, 16, 1, 48, 80),
    "768p-stage2": (1, 16, 1, 96, 160),
}


def reference_loop(shape, gamma: float, num_blocks: int | None = None) -> torch.Tensor:
    """The reference's algorithm, reimplemented: one MultivariateNormal sample per block
    from the global RNG, stacked and rearranged. ``num_blocks`` times only a prefix."""
    *lead, height, width = shape
    total = math.prod(lead) * (height // 2) * (width // 2)
    count = total if num_blocks is None else min(num_blocks, total)
    # The reference passes the covariance (factorised once by LAPACK, which fails on some
    # CPUs at gamma = 1/3); the per-sample cost is the same with the factor given.
    dist = torch.distributions.MultivariateNormal(torch.zeros(4), scale_tril=block_noise_cholesky(gamma),
                                                  validate_args=False)   # the exact factor has a 0 pivot
    draws = torch.stack([dist.sample() for _ in range(count)])               # (N, 4)
    if count < total:
        return draws
    draws = draws.reshape(*lead, height // 2, width // 2, 2, 2)
    return draws.permute(*range(len(lead)), -4, -2, -3, -1).reshape(shape)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_min(fn, repeats: int, device: torch.device) -> float:
    fn()                                                                      # warm-up
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def time_loop(shape, gamma: float, budget_s: float) -> tuple[float, int, bool]:
    """Seconds for the full loop (measured, or extrapolated from a prefix)."""
    total = math.prod(shape[:-2]) * (shape[-2] // 2) * (shape[-1] // 2)
    probe = min(total, 500)
    start = time.perf_counter()
    reference_loop(shape, gamma, probe)
    per_block = (time.perf_counter() - start) / probe
    if per_block * total <= budget_s:
        start = time.perf_counter()
        reference_loop(shape, gamma)
        return time.perf_counter() - start, total, False
    timed = max(probe, int(budget_s / 2 / per_block))
    start = time.perf_counter()
    reference_loop(shape, gamma, timed)
    return (time.perf_counter() - start) * total / timed, timed, True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="where the noise goes (the loop is always CPU, as in the reference)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-budget", type=float, default=20.0, help="seconds before the loop is extrapolated")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gamma = 1 / 3

    for name in args.cases:
        shape = CASES[name]
        generator = torch.Generator().manual_seed(0)
        device_generator = torch.Generator(device).manual_seed(0)
        lower = block_noise_cholesky(gamma).to(device)
        blocks = math.prod(shape[:-2]) * (shape[-2] // 2) * (shape[-1] // 2)
        vectorised = time_min(lambda: block_noise(shape, gamma, generator=generator, device=device),
                              args.repeats, device)
        naive = time_min(lambda: torch.randn((blocks, 4), generator=device_generator, device=device) @ lower.T,
                         args.repeats, device)
        torch.manual_seed(0)
        loop_s, loop_blocks, extrapolated = time_loop(shape, gamma, args.loop_budget)
        print(json.dumps({
            "benchmark": "block_noise",
            "case": name,
            "shape": list(shape),
            "blocks": blocks,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "vectorised_s": round(vectorised, 6),
            "randn_matmul_s": round(naive, 6),
            "reference_loop_s": round(loop_s, 4),
            "loop_blocks_timed": loop_blocks,
            "loop_extrapolated": extrapolated,
            "speedup": round(loop_s / vectorised, 1),
            "portability_cost": round(vectorised / naive, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
