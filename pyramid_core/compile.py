"""``torch.compile`` for the pyramid DiTs, as users of the older wrapper had it (off by default).

Each transformer block is compiled on its own with dynamic shapes: the three pyramid stages
(1/4, 1/2 and full size) and the history that grows unit by unit change the token counts
at every call, and a graph specialised to one size would recompile per stage and unit. The
attention entry point stays eager (it reads ``cu_seqlens`` on the host and picks its backend
at run time), so each block is two graphs joined by the attention call. After the first
video the graphs are compiled; a longer video or another size compiles nothing new
(measured in tests/models/test_compile.py).

The first call of each block is slow (inductor generates and compiles code: seconds to
minutes); later calls reuse it.
"""

from __future__ import annotations

import importlib.util
import shutil

import torch

__all__ = ["COMPILE_MODES", "check_compile_available", "compile_dit", "is_compiled"]

# torch.compile modes offered: inductor's default and its autotuning one (longer to compile).
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def check_compile_available(device: torch.device | str) -> None:
    """``ValueError`` in one sentence when ``torch.compile`` cannot build code for ``device`` here."""
    device = torch.device(device)
    if importlib.util.find_spec("torch._inductor") is None:
        raise ValueError(f"torch {torch.__version__} has no inductor: torch.compile cannot be used; turn compile off")
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "clang++", "c++", "cl")):
        raise ValueError("torch.compile on the CPU needs a C++ compiler (g++ or clang++) on the PATH; install one "
                         "or turn compile off")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ValueError("torch.compile on CUDA needs the triton package; install it or turn compile off")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"torch.compile of the DiT is supported on CPU and CUDA, not {device.type}; turn compile off")


def _blocks(dit: torch.nn.Module) -> list[torch.nn.Module]:
    return [*dit.transformer_blocks, *getattr(dit, "single_transformer_blocks", ())]


def compile_dit(dit: torch.nn.Module, mode: str = "default", device: torch.device | str | None = None) -> torch.nn.Module:
    """Compile every transformer block of a pyramid DiT in place (dynamic shapes); returns ``dit``.

    Args:
        dit: ``PyramidFluxTransformer`` or ``PyramidDiffusionMMDiT``.
        mode: one of :data:`COMPILE_MODES`.
        device: where it will run (default: where its parameters are), for the checks.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    check_compile_available(device if device is not None else next(dit.parameters()).device)
    for block in _blocks(dit):
        block.compile(dynamic=True, mode=None if mode == "default" else mode)
    return dit


def is_compiled(dit: torch.nn.Module) -> bool:
    """Whether :func:`compile_dit` compiled this DiT's blocks."""
    return all(getattr(block, "_compiled_call_impl", None) is not None for block in _blocks(dit))
