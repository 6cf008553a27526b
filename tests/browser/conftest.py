"""The browser tests' Chromium: one persistent context per session (Debian's chromium driven by
Playwright, no browser download) that never leaves this machine; ``browser_support.open_page``
opens tabs in it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

from browser_support import CHROMIUM, CHROMIUM_ARGS
from support import require


@pytest.fixture(scope="session")
def chromium():
    """A Playwright browser context (1400x900) whose requests may reach only 127.0.0.1."""
    require(Path(CHROMIUM).is_file(), f"browser tests need Debian's chromium at {CHROMIUM}: "
                                       "bash scripts/comfyui_env.sh browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "browser tests need the playwright package: bash scripts/comfyui_env.sh browser")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900})

        def keep_on_loopback(route):  # the page must never leave this machine
            if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost", None):
                return route.continue_()
            return route.abort()

        context.route("**/*", keep_on_loopback)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)
