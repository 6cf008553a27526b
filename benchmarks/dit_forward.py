"""Forward time of a medium miniFLUX DiT against the reference's figures.

Medium config: 4 double + 4 single blocks, 8 heads x 64 (57 M parameters), batch 2 (a CFG
pair), 128 T5 tokens. Cases: 64 and 256 image tokens (one clip, no history) and 1,260 image
tokens (the 384p top stage: noisy 48x80 latent plus history clips at 24x40 and 12x20 --
960 + 240 + 60 tokens, frame-causal mask on). The reference seconds were measured with the
official implementation on the CPU machines of this project (2 threads, min of repeats; see
shared/reference/README.md); on any other device the ratio is not meaningful and is omitted.
Prints one JSON line per case.

    python benchmarks/dit_forward.py [--device cuda] [--dtype bf16] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyramid_core.models import PyramidFluxTransformer  # noqa: E402

MEDIUM = dict(num_layers=4, num_single_layers=4, num_attention_heads=8, attention_head_dim=64)
BATCH, TEXT_TOKENS = 2, 128

CASES = {
    # name: latent (H, W) of each clip, history first; one latent frame per clip
    "64-tokens": [(16, 16)],
    "256-tokens": [(32, 32)],
    "1260-tokens-384p-top-stage-with-history": [(12, 20), (24, 40), (48, 80)],
}
REFERENCE_CPU_SECONDS = {
    "64-tokens": 0.103,
    "256-tokens": 0.185,
    "1260-tokens-384p-top-stage-with-history": 0.879,
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_inputs(clips, device, dtype, config) -> dict:
    g = torch.Generator().manual_seed(0)
    sample = [[torch.randn(BATCH, 16, 1, h, w, generator=g).to(device, dtype) for h, w in clips]]
    return dict(
        sample=sample,
        encoder_hidden_states=torch.randn(BATCH, TEXT_TOKENS, config.joint_attention_dim, generator=g).to(device, dtype),
        encoder_attention_mask=torch.ones(BATCH, TEXT_TOKENS, dtype=torch.int64, device=device),
        pooled_projections=torch.randn(BATCH, config.pooled_projection_dim, generator=g).to(device, dtype),
        timestep_ratio=torch.full((BATCH,), 500.0, device=device, dtype=dtype),
    )


def time_forward(model, inputs, repeats: int, device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        model(**inputs)  # warm-up
        sync()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            sync()
            best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(device, dtype) -> float:
    """Throughput of one model-sized matmul right now: how busy this machine is (the CPUs of
    the shared machines vary a lot with load; read the ratios with it)."""
    a = torch.randn(768, 512, device=device, dtype=dtype)
    b = torch.randn(512, 2048, device=device, dtype=dtype)
    seconds = time_forward(lambda: a @ b, {}, 10, device)
    return 2 * 768 * 512 * 2048 / seconds / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the reference figures used 2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    model = PyramidFluxTransformer(**MEDIUM).to(device).eval()
    if dtype != torch.float32:
        model.to(dtype)
    params = sum(p.numel() for p in model.parameters())
    comparable = device.type == "cpu" and args.dtype == "fp32" and args.threads == 2

    for name, clips in CASES.items():
        inputs = make_inputs(clips, device, dtype, model.config)
        seconds = time_forward(model, inputs, args.repeats, device)
        record = {
            "benchmark": "dit_forward",
            "case": name,
            "image_tokens": sum(h * w // 4 for h, w in clips),
            "batch": BATCH,
            "text_tokens": TEXT_TOKENS,
            "params": params,
            "device": str(device),
            "dtype": args.dtype,
            "seconds": round(seconds, 5),
            "machine_matmul_gflops": round(matmul_gflops(device, dtype), 1),
        }
        if comparable:
            ref = REFERENCE_CPU_SECONDS[name]
            record.update(reference_seconds=ref, ratio_reference_over_ours=round(ref / seconds, 3))
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
