"""What fp8 weight storage changes in the DiT's prediction, at the released size; one JSON line.

    python benchmarks/fp8_error.py [--family flux|mmdit] [--size 24x40] [--seed 0]

The released config (tests/data/manifests) with random weights (the training init, then
N(0, 0.02) noise on every weight so no path is zero), one forward pass on the CPU in fp32:
with the weights as they are, rounded to bf16, and rounded to fp8 e4m3fn (as the DiT Loader's
fp8_e4m3fn and ``--weight-dtype`` store them). Computing in fp32 isolates what the storage
does; the fp8 matmul path on GPUs also rounds each layer's input (gpu_check runs it there).
Prints the relative L2 error of each prediction against the fp32 one. About 16 GB of RAM:
the fp32 model and a copy of its linear weights to round from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MANIFESTS = {"flux": "PyramidFluxTransformer.json", "mmdit": "PyramidDiffusionMMDiT.json"}
TEXT_TOKENS, VALID_TEXT = 128, 40


def _model(family: str, seed: int) -> torch.nn.Module:
    from pyramid_core.models import PyramidDiffusionMMDiT, PyramidFluxTransformer

    config = json.loads((ROOT / "tests" / "data" / "manifests" / MANIFESTS[family]).read_text())["released_config"]
    cls = PyramidFluxTransformer if family == "flux" else PyramidDiffusionMMDiT
    torch.manual_seed(seed)
    model = cls.from_config(config).eval().requires_grad_(False)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def _inputs(model, height: int, width: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.int64)
    mask[:, :VALID_TEXT] = 1
    return dict(sample=[[torch.randn(1, 16, 1, height, width, generator=g)]],
                encoder_hidden_states=torch.randn(1, TEXT_TOKENS, model.config.joint_attention_dim, generator=g),
                encoder_attention_mask=mask,
                pooled_projections=torch.randn(1, model.config.pooled_projection_dim, generator=g),
                timestep_ratio=torch.tensor([500.0]))


def _round_linears(model: torch.nn.Module, dtype: torch.dtype, originals: dict) -> None:
    """Every Linear weight rounded through ``dtype`` (from its original fp32 value)."""
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear:
            module.weight.data.copy_(originals[name].to(dtype).float())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="flux", choices=sorted(MANIFESTS))
    parser.add_argument("--size", default="24x40", help="latent height x width of the one frame (default: 192x320 px)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))
    started = time.perf_counter()
    model = _model(args.family, args.seed)
    inputs = _inputs(model, height, width, args.seed)
    originals = {name: m.weight.data.clone() for name, m in model.named_modules() if type(m) is torch.nn.Linear}
    with torch.no_grad():
        reference = model(**inputs)[0]
        errors = {}
        for label, dtype in (("bf16_weights", torch.bfloat16), ("fp8_e4m3fn_weights", torch.float8_e4m3fn)):
            _round_linears(model, dtype, originals)
            out = model(**inputs)[0]
            errors[label] = round(float((out - reference).norm() / reference.norm()), 5)
    print(json.dumps({"benchmark": "fp8_error", "family": args.family, "latent_size": [height, width],
                      "compute": "fp32 (CPU)", "relative_l2_error_vs_fp32": errors,
                      "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
