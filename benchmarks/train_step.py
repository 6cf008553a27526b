"""Training throughput: pyramidal flow matching against full-resolution flow matching.

Same miniFLUX model, same batch of clean latents, same optimizer (AdamW over all weights);
only the objective changes:

* ``pyramid-temporal``: the released recipe -- stage columns (1, 2, 1), autoregressive temporal
  pyramid (one unit trained per column, compressed history), history lengths cycling with the step;
* ``pyramid-full-sequence``: stage columns (1, 2, 1), every column denoises the whole clip;
* ``full-resolution``: one stage (scheduler stage_range (0, 1)): plain rectified flow on the
  whole clip at full resolution -- the baseline.

A step is objective + forward + backward + optimizer step. Each case runs a full cycle of
history lengths per repeat (``max_units`` steps) and reports the best repeat. Prints one JSON
line per case: samples/second, ``speedup_vs_full_resolution`` (measured in this run) and peak
memory (CUDA only; ``null`` on the CPU).

    python benchmarks/train_step.py [--device cuda] [--dtype bf16] [--size medium]
        [--frames 16 --height 48 --width 80] [--batch 4] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyramid_core.models import PyramidFluxTransformer  # noqa: E402
from pyramid_core.scheduling import PyramidFlowScheduler  # noqa: E402
from pyramid_core.training.dit_objective import (PyramidObjective, TextBatch, build_training_batch,  # noqa: E402
                                                 flow_matching_loss)

SIZES = {
    "tiny": dict(num_layers=2, num_single_layers=2, num_attention_heads=4, attention_head_dim=32,
                 axes_dims_rope=(8, 12, 12), joint_attention_dim=64, pooled_projection_dim=32),
    "medium": dict(num_layers=4, num_single_layers=4, num_attention_heads=8, attention_head_dim=64,
                   axes_dims_rope=(16, 24, 24), joint_attention_dim=4096, pooled_projection_dim=768),
}
TEXT_TOKENS = 128


def cases(frames: int) -> dict[str, tuple[PyramidObjective, PyramidFlowScheduler]]:
    common = dict(max_latent_frames=frames, cfg_rate=0.0)
    return {
        "pyramid-temporal": (PyramidObjective(sample_ratios=(1, 2, 1), temporal_pyramid=True, **common),
                             PyramidFlowScheduler()),
        "pyramid-full-sequence": (PyramidObjective(sample_ratios=(1, 2, 1), temporal_pyramid=False, **common),
                                  PyramidFlowScheduler()),
        "full-resolution": (PyramidObjective(sample_ratios=(1,), temporal_pyramid=False, **common),
                            PyramidFlowScheduler(stage_range=(0.0, 1.0))),
    }


def make_data(args, config, device):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(args.batch, 16, args.frames, args.height, args.width, generator=g).to(device)
    text = TextBatch(torch.randn(args.batch, TEXT_TOKENS, config.joint_attention_dim, generator=g),
                     torch.ones(args.batch, TEXT_TOKENS, dtype=torch.int64),
                     torch.randn(args.batch, config.pooled_projection_dim, generator=g)).to(device)
    return latents, text


def run_case(model, optimizer, objective, scheduler, latents, text, args, device) -> dict:
    generator = torch.Generator(device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else contextlib.nullcontext()

    def step(i: int) -> None:
        inputs = build_training_batch(latents, text, objective, scheduler, generator=generator, step=i)
        with autocast:
            predictions = model(**inputs.dit_kwargs())
        loss = flow_matching_loss(predictions, inputs.targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    cycle = objective.max_units if objective.temporal_pyramid else 1
    steps = max(cycle, args.min_steps)
    step(0)  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        sync()
        best = min(best, (time.perf_counter() - start) / steps)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"sec_per_step": best, "samples_per_sec": args.batch / best, "peak_memory_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="tiny on the CPU, medium on CUDA")
    parser.add_argument("--frames", type=int, default=None, help="latent frames (16 = 5 s at 384p)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.size = args.size or ("medium" if gpu else "tiny")
    args.frames = args.frames or (16 if gpu else 8)
    args.height = args.height or (48 if gpu else 32)
    args.width = args.width or (80 if gpu else 32)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = PyramidFluxTransformer(**SIZES[args.size]).to(device).train()
    if gpu:
        model.enable_gradient_checkpointing()
    latents, text = make_data(args, model.config, device)
    baseline = None
    results = {}
    for name, (objective, scheduler) in reversed(list(cases(args.frames).items())):  # baseline first
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        results[name] = run_case(model, optimizer, objective, scheduler, latents, text, args, device)
        del optimizer
        baseline = baseline or results[name]["samples_per_sec"]
    for name in cases(args.frames):
        r = results[name]
        print(json.dumps({
            "benchmark": "train_step", "case": name, "device": str(device), "dtype": args.dtype,
            "model": args.size, "batch": args.batch, "latent": [16, args.frames, args.height, args.width],
            "sec_per_step": round(r["sec_per_step"], 5), "samples_per_sec": round(r["samples_per_sec"], 3),
            "speedup_vs_full_resolution": round(r["samples_per_sec"] / baseline, 3),
            "peak_memory_mib": None if r["peak_memory_mib"] is None else round(r["peak_memory_mib"], 1),
        }))


if __name__ == "__main__":
    main()
