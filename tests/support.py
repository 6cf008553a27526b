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
