"""Peak resident memory of one call on Linux, for the benchmarks that report memory on the CPU.

``peak_above(fn)`` returns fn's result and the most resident memory (MiB) the process held
during the call above what it held before: freed heap is handed back first (glibc
``malloc_trim``) and the kernel's high-water mark is reset (``/proc/self/clear_refs``), so
calls measured one after another in one process do not hide each other's peaks.
"""

from __future__ import annotations

import ctypes
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Set the high-water mark to the current resident memory; False where Linux refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_above(fn):
    """``(fn(), peak MiB above the start, exact)``; ``exact`` is False where the mark could not be reset."""
    import gc

    gc.collect()
    _trim_heap()
    exact = reset_peak()
    before = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    return result, (peak - before) / 1024, exact
