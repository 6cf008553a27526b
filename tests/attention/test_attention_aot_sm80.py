"""Compiles every varlen attention kernel for sm_80 offline (no GPU) and checks register use.

``python -m pyramid_core.attention.aot`` runs ``triton.compile`` for GPUTarget("cuda", 80, 32)
over each kernel x head_dim (64, 128) x mask switch x autotuning config kept by
``keep_config``, and reads registers / local-memory stack from the cubin. A forward kernel
that spills fails the test; backward spills are reported (printed and as a warning).
It runs in a subprocess because it needs the real JIT kernels (no TRITON_INTERPRET).
Set PYRAMID_AOT_ARCHS=80,90 to add Hopper.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _compile_reports(arch: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "pyramid_core.attention.aot", "--arch", str(arch)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"offline compile for sm_{arch} failed:\n{proc.stderr[-6000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _row(r: dict) -> str:
    return (f"sm_{r['arch']} {r['kernel']:4s} d={r['block_d']:3d} mask={'frame' if r['frame_mask'] else 'none '} "
            f"{r['BLOCK_M']:3d}x{r['BLOCK_N']:<3d} warps={r['num_warps']} stages={r['num_stages']}: "
            f"regs={r['regs']:3d} spill_stack={r['stack_bytes']:4d}B smem={r['smem_bytes']}B ({r['compile_s']}s)")


def test_kernels_compile_for_sm80_without_forward_spills():
    archs = [int(a) for a in os.environ.get("PYRAMID_AOT_ARCHS", "80").split(",")]
    reports = [r for arch in archs for r in _compile_reports(arch)]
    print("\n".join(_row(r) for r in reports))
    kernels = {r["kernel"] for r in reports}
    assert kernels == {"fwd", "dkdv", "dq"}, kernels
    assert {r["block_d"] for r in reports} == {64, 128}
    fwd_spills = [_row(r) for r in reports if r["kernel"] == "fwd" and r["stack_bytes"] > 0]
    assert not fwd_spills, "forward kernels spill registers:\n" + "\n".join(fwd_spills)
    bwd_spills = [_row(r) for r in reports if r["kernel"] != "fwd" and r["stack_bytes"] > 0]
    if bwd_spills:
        warnings.warn("backward kernels spill registers:\n" + "\n".join(bwd_spills))
