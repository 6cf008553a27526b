"""torch.compile of the DiT blocks against eager, side by side in one run.

The medium miniFLUX of dit_forward.py (4 double + 4 single blocks, 8 heads x 64), one forward
of a CFG pair per case, eager and compiled (pyramid_core.compile: every block, inductor,
dynamic shapes) timed in alternating rounds after the compiled model has seen every case
once (compiling is reported apart). Prints one JSON line per case with both medians and the
ratio, and one with the compile time.

    python benchmarks/compile_speedup.py [--device cuda] [--dtype bf16] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dit_forward import CASES, DTYPES, MEDIUM, make_inputs  # noqa: E402
from pyramid_core.compile import compile_dit  # noqa: E402
from pyramid_core.models import PyramidFluxTransformer  # noqa: E402


def once(model, inputs, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        model(**inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    eager = PyramidFluxTransformer(**MEDIUM).to(device, dtype).eval()
    compiled = compile_dit(copy.deepcopy(eager), device=device)
    cases = {name: make_inputs(clips, device, dtype, eager.config) for name, clips in CASES.items()}

    start = time.perf_counter()
    for inputs in cases.values():                      # compile: every case once
        once(compiled, inputs, device)
    compile_seconds = time.perf_counter() - start
    print(json.dumps({"benchmark": "compile_speedup", "case": "compile", "seconds": round(compile_seconds, 2),
                      "device": str(device), "dtype": args.dtype}), flush=True)
    for name, inputs in cases.items():
        once(eager, inputs, device)                     # warm-up
        times = {"eager": [], "compiled": []}
        for _ in range(args.rounds):                    # alternating, so load changes hit both
            times["eager"].append(once(eager, inputs, device))
            times["compiled"].append(once(compiled, inputs, device))
        with torch.no_grad():
            difference = (compiled(**inputs)[0] - eager(**inputs)[0]).abs().max().item()
        eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
        print(json.dumps({"benchmark": "compile_speedup", "case": name, "device": str(device), "dtype": args.dtype,
                          "eager_s": round(eager_s, 4), "compiled_s": round(compiled_s, 4),
                          "speedup": round(eager_s / compiled_s, 3), "max_abs_difference": difference}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
