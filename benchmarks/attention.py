"""Varlen attention: our Triton kernels vs torch SDPA, at Pyramid Flow sequence lengths.

    python benchmarks/attention.py [--cases 384p_16f 768p_31f] [--heads 24] [--seqs 2] [--portable]

Prints one JSON line per (case, mask, pass): time, TFLOP/s and peak memory of ours and of the
baseline, and their ratios (``speedup`` = baseline_ms / ours_ms, ``memory_ratio`` =
ours_peak / baseline_peak). Baselines, measured in the same run:

* mask "none":  SDPA restricted to its FlashAttention backend, on a dense ``(B, H, L, D)``
  batch (every packed sequence has the same length, so no padding is needed).
* mask "frame": SDPA with a dense boolean ``(B, 1, L, L)`` frame-causal mask (what the SDPA
  backend of pyramid_core would do, but batched), letting torch pick its kernel.

FLOPs count the visible (query, key) pairs: 4 * H * D per pair forward, 2.5x that backward
(FlashAttention's convention), so masked and unmasked numbers are comparable.

Token counts (bf16, head_dim 64; miniFLUX has 30 heads of 64, SD3-medium 24):
the 384p top stage is 640x384 px -> 8x VAE -> 80x48 latent -> 2x2 patches -> 960 tokens per
latent frame; 768p is 1280x768 -> 3840. A unit at the top stage attends 128 text tokens
(frame 0), the noisy current latent frame at full size, and its temporal-pyramid history:
the most recent past frame at full size, the next two at half size (1/4 tokens) and the rest
at quarter size (1/16 tokens). 16 latent frames = 5 s at 24 fps (384p), 31 = 10 s (768p):

* 384p_16f: 128 + 960 + 960 + 2*240 + 12*60     =  3248 tokens, frames 0..15
* 384p_31f: 128 + 960 + 960 + 2*240 + 27*60     =  4148 tokens, frames 0..30
* 768p_16f: 128 + 3840 + 3840 + 2*960 + 12*240  = 12608 tokens, frames 0..15
* 768p_31f: 128 + 3840 + 3840 + 2*960 + 27*240  = 16208 tokens, frames 0..30

Without CUDA the Triton comparison is skipped (one JSON line says so) and ``--portable``
runs instead, which works on any device:

* portable: the SDPA backend's frame-causal attention as it runs today (one unmasked SDPA
  per frame over its key prefix) against the same backend with the dense boolean mask it used
  before (``block_causal=False``), forward, medians of alternating rounds; fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT_TOKENS = 128
CASES = {
    # name: (tokens per full-size latent frame, number of latent frames incl. the current one)
    "384p_16f": (960, 16),
    "384p_31f": (960, 31),
    "768p_16f": (3840, 16),
    "768p_31f": (3840, 31),
}


def frame_layout(frame_tokens: int, num_frames: int) -> torch.Tensor:
    """Frame id per token of one sequence: text, oldest history ... newest history, current."""
    history = num_frames - 1
    sizes = []
    for age in range(history, 0, -1):  # oldest first; age 1 = most recent
        sizes.append(frame_tokens if age == 1 else frame_tokens // 4 if age <= 3 else frame_tokens // 16)
    sizes.append(frame_tokens)  # the frame being denoised
    ids = [torch.zeros(TEXT_TOKENS, dtype=torch.int32)]
    ids += [torch.full((n,), f, dtype=torch.int32) for f, n in enumerate(sizes)]
    return torch.cat(ids)


def visible_pairs(frames: torch.Tensor) -> int:
    """Number of (i, j) with frames[j] <= frames[i], from the frame histogram (no L x L matrix)."""
    counts = torch.bincount(frames.long()).double()
    return int((counts * counts.cumsum(0)).sum())


def measure(fn, device) -> tuple[float, float]:
    """(milliseconds, peak MiB above the memory in use before) of ``fn``."""
    import triton.testing

    fn()  # autotune / warm up outside the measurement
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    ms = triton.testing.do_bench(fn, warmup=25, rep=100)
    return ms, peak


def run_case(name, heads, head_dim, seqs, device, passes):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pyramid_core.attention import varlen_attention

    frame_tokens, num_frames = CASES[name]
    frames_one = frame_layout(frame_tokens, num_frames)
    length = frames_one.numel()
    total = length * seqs
    dtype = torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(total, heads, head_dim, device=device, dtype=dtype, generator=g) for _ in range(3))
    cu = torch.arange(0, total + 1, length, device=device, dtype=torch.int32)
    frames = frames_one.repeat(seqs).to(device)
    dense = lambda t: t.view(seqs, length, heads, head_dim).transpose(1, 2)  # noqa: E731  (B, H, L, D)
    mask = (frames_one[None, :] <= frames_one[:, None]).to(device)[None, None]  # (1, 1, L, L)

    for masked in (False, True):
        pairs = seqs * (visible_pairs(frames_one) if masked else length * length)
        fwd_flops = 4.0 * heads * head_dim * pairs
        ours = lambda q, k, v, m=masked: varlen_attention(  # noqa: E731
            q, k, v, cu, frame_ids=frames if m else None, backend="triton")
        if masked:
            def base(q, k, v):
                return torch.nn.functional.scaled_dot_product_attention(dense(q), dense(k), dense(v), attn_mask=mask)
        else:
            def base(q, k, v):
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(dense(q), dense(k), dense(v))
        for mode in passes:
            leaves = [t.detach().requires_grad_(mode == "fwd+bwd") for t in (q, k, v)]

            def bench(fn):
                if mode == "fwd":
                    def call():
                        with torch.no_grad():
                            fn(*leaves)
                else:
                    def call():
                        out = fn(*leaves)
                        out.backward(torch.ones_like(out))
                return measure(call, device)

            flops = fwd_flops * (1.0 if mode == "fwd" else 3.5)
            ours_ms, ours_mib = bench(ours)
            try:
                base_ms, base_mib, base_err = *bench(base), None
            except (RuntimeError, torch.OutOfMemoryError) as err:  # e.g. no kernel for the mask
                base_ms, base_mib, base_err = float("nan"), float("nan"), str(err).splitlines()[0]
            row = {
                "bench": "varlen_attention", "case": name, "mask": "frame" if masked else "none", "pass": mode,
                "seqs": seqs, "tokens_per_seq": length, "total_tokens": total, "latent_frames": num_frames,
                "heads": heads, "head_dim": head_dim, "dtype": "bf16",
                "ours_ms": round(ours_ms, 4), "ours_tflops": round(flops / ours_ms / 1e9, 1),
                "ours_peak_mib": round(ours_mib, 1),
                "baseline": "sdpa_dense_bool_mask" if masked else "sdpa_flash",
                "baseline_ms": round(base_ms, 4), "baseline_tflops": round(flops / base_ms / 1e9, 1),
                "baseline_peak_mib": round(base_mib, 1),
                "speedup": round(base_ms / ours_ms, 3), "memory_ratio": round(ours_mib / base_mib, 3) if base_mib else None,
                "device": torch.cuda.get_device_name(device),
            }
            if base_err:
                row["baseline_error"] = base_err
            print(json.dumps(row), flush=True)


def run_portable_case(name, heads, head_dim, seqs, device, dtype, rounds) -> None:
    """Block-causal SDPA against the dense-mask SDPA, both through the SDPA backend."""
    import statistics
    import time

    from pyramid_core.attention.sdpa import varlen_attention_sdpa

    frame_tokens, num_frames = CASES[name]
    frames_one = frame_layout(frame_tokens, num_frames)
    length = frames_one.numel()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(length * seqs, heads, head_dim, generator=g).to(device, dtype) for _ in range(3))
    cu = torch.arange(0, length * seqs + 1, length, dtype=torch.int32).to(device)
    frames = frames_one.repeat(seqs).to(device)

    def timed(block_causal: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            varlen_attention_sdpa(q, k, v, cu, frames, block_causal=block_causal)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    with torch.no_grad():
        difference = (varlen_attention_sdpa(q, k, v, cu, frames) - varlen_attention_sdpa(
            q, k, v, cu, frames, block_causal=False)).abs().max().item()
    times = {True: [], False: []}
    for _ in range(rounds):
        for block_causal in (False, True):
            times[block_causal].append(timed(block_causal))
    blocks, masked = statistics.median(times[True]), statistics.median(times[False])
    print(json.dumps({"bench": "varlen_attention_portable", "case": name, "mask": "frame", "pass": "fwd",
                      "seqs": seqs, "tokens_per_seq": length, "heads": heads, "head_dim": head_dim,
                      "dtype": str(dtype).removeprefix("torch."), "device": str(device),
                      "block_causal_ms": round(blocks * 1e3, 2), "dense_mask_ms": round(masked * 1e3, 2),
                      "speedup": round(masked / blocks, 3), "visible_fraction": round(
                          visible_pairs(frames_one) / length**2, 3), "max_difference": difference}), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--head-dim", type=int, default=64, choices=[64, 128])
    parser.add_argument("--seqs", type=int, default=2, help="sequences packed per call")
    parser.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--portable", action="store_true",
                        help="(also) the SDPA backend's block-causal path against its dense mask; default without CUDA")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the portable comparison")
    args = parser.parse_args(argv)
    if args.portable or not torch.cuda.is_available():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        for name in args.cases:
            run_portable_case(name, args.heads, args.head_dim, args.seqs, device, dtype, args.rounds)
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "varlen_attention", "skipped": True,
                          "reason": "no CUDA device: the Triton kernels and SDPA's flash backend need a GPU"}))
        return 0
    device = torch.device("cuda")
    for name in args.cases:
        run_case(name, args.heads, args.head_dim, args.seqs, device, args.passes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
