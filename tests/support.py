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


def torchrun_command(nproc: int, *args: str, env: dict | None = None) -> tuple[list[str], dict]:
    """``(command, environment)`` of ``torchrun --nproc_per_node nproc ARGS`` on 127.0.0.1 with
    one thread per rank and this repository importable."""
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    return cmd, {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}


def torchrun(nproc: int, *args: str, timeout: float = 300, env: dict | None = None, **kwargs):
    """Run :func:`torchrun_command` from the repository root (gloo on the CPU); returns the
    ``CompletedProcess`` with its text output captured."""
    import subprocess

    cmd, env = torchrun_command(nproc, *args, env=env)
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)
