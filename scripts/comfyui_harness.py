"""Start a real ComfyUI server with this pack and talk to it over HTTP (standard library only).

Used by the test fixtures (``tests/conftest.py``) and by the demo (``scripts/demo.py``).
Each server gets its own base directory (``--base-directory``) holding ``custom_nodes/``
with only this pack linked in, ``models/``, ``input/``, ``output/`` and ``user/``, so a
user's own ComfyUI install (``COMFYUI_DIR``) is never written to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "pyramid-flow"
DEFAULT_COMFYUI_DIR = PACK_ROOT / ".cache" / "comfyui" / "ComfyUI"


class ComfyUIError(RuntimeError):
    """The server failed, refused a prompt or timed out; the message carries its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comfyui_location() -> tuple[Path, str]:
    """``(ComfyUI dir, python)`` from ``COMFYUI_DIR``/``COMFYUI_PYTHON`` or the project cache."""
    comfy_dir = Path(os.environ.get("COMFYUI_DIR") or DEFAULT_COMFYUI_DIR)
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    if not (comfy_dir / "main.py").is_file():
        raise ComfyUIError(
            f"no ComfyUI at {comfy_dir}: run 'bash scripts/comfyui_env.sh setup' "
            "or set COMFYUI_DIR to an existing ComfyUI"
        )
    return comfy_dir, python


def prepare_base_dir(base_dir: Path) -> None:
    """A ComfyUI ``--base-directory``: its folders, and this pack linked into custom_nodes."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    link = base_dir / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(PACK_ROOT, target_is_directory=True)


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Wait until the server at ``url`` answers ``/system_stats``; :class:`ComfyUIError` if
    ``process`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ComfyUIError(f"ComfyUI exited with code {process.returncode} while starting")
        try:
            urllib.request.urlopen(url + "/system_stats", timeout=2).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.25)
    raise ComfyUIError(f"ComfyUI did not answer {url}/system_stats within {timeout:.0f} s")


class ComfyUIServer:
    """One headless ComfyUI process on 127.0.0.1 with this pack loaded.

    Use as a context manager; ``stop()`` always ends the process (SIGTERM, then SIGKILL).
    Every wait has a timeout; failures raise :class:`ComfyUIError` with the log tail.
    """

    def __init__(self, base_dir: Path | None = None, *, extra_args: tuple[str, ...] = (),
                 startup_timeout: float = 120.0) -> None:
        self.comfy_dir, self.python = comfyui_location()
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="comfyui-base-"))
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = self.base_dir / "server.log"

    # -- layout ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, attempts: int = 3) -> "ComfyUIServer":
        """Start the server on a free port and wait until ``/system_stats`` answers."""
        prepare_base_dir(self.base_dir)
        for attempt in range(attempts):
            self.port = free_port()
            self._spawn()
            try:
                self._wait_until_ready()
                return self
            except ComfyUIError:
                port_taken = "address already in use" in self.log_tail().lower()
                self.stop()
                if not port_taken or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        cmd = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-api-nodes", "--disable-auto-launch",
            "--base-directory", str(self.base_dir),
            "--database-url", "sqlite:///:memory:",
            *self.extra_args,
        ]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1",
                   PYTHONUNBUFFERED="1")
        log = open(self.log_path, "ab")
        # Own process group, so stop() also reaches anything the server spawned.
        self.process = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()

    def _wait_until_ready(self) -> None:
        try:
            wait_until_ready(self.url, self.process, self.startup_timeout)
        except ComfyUIError as err:
            raise ComfyUIError(str(err) + self.log_excerpt()) from None

    def stop(self, timeout: float = 15.0) -> None:
        """End the server and its process group; waits at most ``2 * timeout`` seconds."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue

    def cleanup(self) -> None:
        """Stop, then remove the base directory if this object created it."""
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "ComfyUIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # -- log ------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_excerpt(self, lines: int = 60) -> str:
        return f"\n--- ComfyUI log ({self.log_path}), last {lines} lines ---\n{self.log_tail(lines)}"

    # -- HTTP -----------------------------------------------------------------------------
    def _request(self, path: str, data: bytes | None = None, timeout: float = 30.0):
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        return urllib.request.urlopen(req, timeout=timeout)

    def get_json(self, path: str, timeout: float = 30.0):
        with self._request(path, timeout=timeout) as resp:
            return json.load(resp)

    def get_bytes(self, path: str, timeout: float = 60.0) -> bytes:
        with self._request(path, timeout=timeout) as resp:
            return resp.read()

    def post_json(self, path: str, payload, timeout: float = 30.0):
        with self._request(path, json.dumps(payload).encode(), timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def object_info(self, node_type: str | None = None) -> dict:
        """``/object_info`` (every node type) or ``/object_info/<type>``."""
        path = "/object_info" + (f"/{urllib.parse.quote(node_type)}" if node_type else "")
        return self.get_json(path, timeout=60)

    def submit(self, prompt: dict) -> str:
        """POST an API-format prompt; returns its prompt id. Validation errors raise with details."""
        try:
            return self.post_json("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:4000]
            raise ComfyUIError(f"POST /prompt was refused ({err.code}): {detail}") from None

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Poll ``/history/<id>`` until the prompt succeeds or fails; returns its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # ComfyUI adds a prompt to the history only once it has ended (ran, failed or was
            # interrupted), with status_str "success" or "error".
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status"):
                return entry
            if self.process is None or self.process.poll() is not None:
                raise ComfyUIError(f"ComfyUI died while running prompt {prompt_id}" + self.log_excerpt())
            time.sleep(0.1)
        raise ComfyUIError(f"prompt {prompt_id} did not finish within {timeout:.0f} s" + self.log_excerpt())

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Submit, wait, and raise unless the prompt succeeded; returns its history entry."""
        entry = self.wait(self.submit(prompt), timeout)
        if entry["status"].get("status_str") != "success":
            messages = json.dumps(entry["status"].get("messages", []), indent=1)[:6000]
            raise ComfyUIError(f"prompt failed: {messages}" + self.log_excerpt())
        return entry

    def interrupt(self) -> None:
        """Ask the server to stop the running prompt (``/interrupt``)."""
        self.post_json("/interrupt", {})

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        """Download one output file through ``/view``."""
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        return self.get_bytes(f"/view?{query}")


def output_files(entry: dict) -> list[dict]:
    """Every ``{"filename", "subfolder", "type"}`` record of a history entry's outputs."""
    files = []
    for node_output in entry.get("outputs", {}).values():
        for items in node_output.values():
            if isinstance(items, list):
                files.extend(item for item in items if isinstance(item, dict) and "filename" in item)
    return files
