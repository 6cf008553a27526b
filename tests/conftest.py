"""Shared fixtures: a real ComfyUI server for the node and workflow tests.

The server comes from ``scripts/comfyui_env.sh setup`` (or ``COMFYUI_DIR`` for an existing
install). It starts once per test session on a free loopback port and always stops; when a
test that used it fails, the server log is attached to the report.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "tests" / "_artifacts"
sys.path.insert(0, str(REPO_ROOT / "scripts"))  # comfyui_harness
sys.path.insert(0, str(REPO_ROOT / "tests"))  # shared test helpers (golden_utils, ...)

# Nothing a test runs writes to the user's own cache (attention choices, self-check verdicts).
os.environ["PYRAMID_CACHE_DIR"] = tempfile.mkdtemp(prefix="pyramid-test-cache-")

from comfyui_harness import ComfyUIError, ComfyUIServer  # noqa: E402
from support import require  # noqa: E402


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave screenshots and logs for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@contextlib.contextmanager
def _running_server(log_file: Path, prepare=None, extra_args: tuple[str, ...] = ()):
    """A started ComfyUI with this pack (skipped when none is installed); always stopped, its
    log left in ``log_file``. ``prepare(base_dir)`` runs before it starts."""
    try:
        server = ComfyUIServer(base_dir=None, extra_args=extra_args)
    except ComfyUIError as err:
        require(False, str(err))
    try:
        if prepare is not None:
            prepare(server.base_dir)
        server.start()
    except ComfyUIError as err:
        server.cleanup()
        pytest.fail(str(err), pytrace=False)
    try:
        yield server
    finally:
        log = server.log_text()
        server.cleanup()
        log_file.write_text(log)


@pytest.fixture(scope="session")
def comfyui(artifacts_dir):
    """A running ComfyUI with this pack loaded (:class:`comfyui_harness.ComfyUIServer`)."""
    with _running_server(artifacts_dir / "comfyui_server.log") as server:
        yield server


@pytest.fixture(scope="session")
def tiny_comfyui(comfyui):
    """The server with tiny checkpoints under the workflows' file names, and small input media."""
    from tiny_checkpoints import write_stand_ins

    write_stand_ins(comfyui.models_dir, comfyui.input_dir)
    return comfyui


@pytest.fixture(scope="session")
def toy_comfyui(artifacts_dir):
    """A second ComfyUI set up as ``serve`` sets it up without real models: the committed toy
    model under the workflows' file names, the toy world's input image and clip, latent
    previews on, and the template browser's templates made for the toy model (scripts/serve.py)."""
    import serve

    with _running_server(artifacts_dir / "toy_comfyui_server.log", prepare=serve.prepare_stand_ins,
                         extra_args=serve.SERVE_ARGS) as server:
        serve.write_toy_templates(server.url, server.base_dir)
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the ComfyUI log tail to every failing test that used the server."""
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    server = funcargs.get("comfyui") or funcargs.get("toy_comfyui")
    if report.failed and isinstance(server, ComfyUIServer):
        report.sections.append(("ComfyUI server log (tail)", server.log_tail(80)))
