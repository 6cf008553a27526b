"""Runs triton_interp_cases.py (Triton kernels vs SDPA, forward and gradients) in its own process.

Why a subprocess: Triton chooses interpreter or GPU compilation when ``@triton.jit``
decorates a kernel (triton 3.9 reads TRITON_INTERPRET then, not at launch), i.e. when
pyramid_core.attention.triton_varlen is first imported. In a whole-suite run another test may
import it first without the interpreter, and a conftest setting the variable would also leak
into every other test. A fresh process with TRITON_INTERPRET=1 avoids both, and a failure
here shows the inner pytest report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_triton_kernels_match_sdpa_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=5",
         str(HERE / "triton_interp_cases.py")],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600,
    )
    report = proc.stdout + proc.stderr
    print(report)  # shown with -s or on failure
    assert proc.returncode == 0, f"interpreter cases failed:\n{report[-6000:]}"
    assert " passed" in report and " skipped" not in report, report[-2000:]
