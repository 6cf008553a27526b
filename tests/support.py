"""Helpers shared by the test modules (importable because conftest puts tests/ on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip with ``reason`` when an optional tool is missing, but fail in CI, which installs it."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI installs it: see scripts/run_tests.sh)")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str, timeout: float = 300, env: dict | None = None, **kwargs):
    """Run ``torchrun --nproc_per_node nproc ARGS`` (gloo on the CPU, one thread per rank) from the
    repository root; returns the ``CompletedProcess`` (text output captured)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)
