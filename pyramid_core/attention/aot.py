"""Offline register report for the varlen attention kernels (no GPU needed).

Compiles every kernel of :mod:`pyramid_core.attention.triton_varlen` with every autotuning
configuration that its keep-filter leaves, for a given CUDA architecture, via
``triton.compile(ASTSource, target=GPUTarget("cuda", arch, 32))``, and reads registers, the
local-memory stack (non-zero means ptxas spilled) and shared memory from the cubin with the
``cuobjdump`` bundled in Triton's NVIDIA backend. Use it when changing tiles or warps::

    python -m pyramid_core.attention.aot --arch 80 90            # one JSON line per kernel
    python -m pyramid_core.attention.aot --arch 80 --masks frame

Must run without ``TRITON_INTERPRET=1`` (it needs real ``JITFunction`` objects).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import triton_varlen as tv


@dataclass
class KernelReport:
    kernel: str
    arch: int
    dtype: str
    block_d: int
    frame_mask: bool
    BLOCK_M: int
    BLOCK_N: int
    num_warps: int
    num_stages: int
    regs: int
    stack_bytes: int  # local-memory frame; > 0 means register spills
    smem_bytes: int
    compile_s: float


_KERNELS = {
    # name: (jit function, autotuned configs, fp32 scalar args)
    "fwd": (tv._varlen_fwd_kernel, tv.FWD_CONFIGS, ("qk_scale",)),
    "dkdv": (tv._varlen_bwd_dkdv_kernel, tv.BWD_DKDV_CONFIGS, ("qk_scale", "sm_scale")),
    "dq": (tv._varlen_bwd_dq_kernel, tv.BWD_DQ_CONFIGS, ("qk_scale", "sm_scale")),
}
_INDEX_PTRS = ("CU_SEQLENS", "FRAME_IDS")
_FP32_PTRS = ("LSE", "DELTA")


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _resources(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) of the single kernel in ``cubin``."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    reg, stack = re.search(r"REG:(\d+)", out), re.search(r"STACK:(\d+)", out)
    return int(reg.group(1)) if reg else -1, int(stack.group(1)) if stack else -1


def _signature(fn, dtype: str, fp32_scalars, constexprs):
    """Triton signature + the divisibility hints the JIT would derive for aligned tensors."""
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name in _INDEX_PTRS:
            signature[name] = "*i32"
        elif name in _FP32_PTRS:
            signature[name] = "*fp32"
        elif name.isupper():
            signature[name] = f"*{dtype}"
        elif name in fp32_scalars:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
        # torch allocations are 16-byte aligned and token/head strides of 64/128-wide heads
        # are multiples of 16: the JIT would mark those, so mark them here too.
        if signature[name].startswith("*") or (name.startswith("stride_") and name != "stride_lse_h"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, attrs


def compile_kernel(kernel: str, arch: int, block_d: int, frame_mask: bool, config: triton.Config,
                   dtype: str = "bf16") -> KernelReport:
    fn, _, fp32_scalars = _KERNELS[kernel]
    # With the frame mask, the models' sorted ids (the fast path) are what is compiled.
    constexprs = dict(GROUP=1, HEAD_DIM=block_d, BLOCK_D=block_d, FRAME_MASK=frame_mask,
                      SORTED_FRAMES=frame_mask, DOT_PRECISION="tf32", **config.kwargs)
    signature, attrs = _signature(fn, dtype, fp32_scalars, constexprs)
    t0 = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    seconds = time.perf_counter() - t0
    regs, stack = _resources(compiled.asm["cubin"])
    return KernelReport(kernel, arch, dtype, block_d, frame_mask, config.kwargs["BLOCK_M"],
                        config.kwargs["BLOCK_N"], config.num_warps, config.num_stages, regs, stack,
                        compiled.metadata.shared, round(seconds, 2))


def compile_all(arch: int, masks=(False, True), block_dims=(64, 128), kernels=tuple(_KERNELS),
                dtype: str = "bf16"):
    """Yield a :class:`KernelReport` for every kept (kernel, head_dim, mask, config)."""
    for kernel in kernels:
        configs = _KERNELS[kernel][1]
        for block_d in block_dims:
            for config in configs:
                for frame_mask in masks:
                    if tv.keep_config(kernel, config, block_d, frame_mask, arch):
                        yield compile_kernel(kernel, arch, block_d, frame_mask, config, dtype)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[80])
    parser.add_argument("--masks", choices=["none", "frame", "both"], default="both")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--kernels", nargs="+", default=list(_KERNELS), choices=list(_KERNELS))
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    args = parser.parse_args(argv)
    if tv.is_interpreting():
        print("aot: unset TRITON_INTERPRET; the interpreter's kernels cannot be compiled", file=sys.stderr)
        return 2
    masks = {"none": (False,), "frame": (True,), "both": (False, True)}[args.masks]
    for arch in args.arch:
        for report in compile_all(arch, masks, tuple(args.head_dims), tuple(args.kernels), args.dtype):
            print(json.dumps(asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
