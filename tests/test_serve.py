"""``serve`` picks the stand-ins when no Pyramid Flow DiT is in the ComfyUI's models folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from serve import has_pyramid_dit, port_taken_by
from support import REPO_ROOT, free_port


def test_a_pyramid_dit_is_recognised_by_file_name_or_official_folder(tmp_path):
    models = tmp_path / "models"
    assert not has_pyramid_dit(models)
    (models / "diffusion_models").mkdir(parents=True)
    (models / "diffusion_models" / "flux1-dev.safetensors").write_bytes(b"")
    assert not has_pyramid_dit(models)
    (models / "diffusion_models" / "pyramid_flow_miniflux_768p.safetensors").write_bytes(b"")
    assert has_pyramid_dit(models)

    other = tmp_path / "other"
    folder = other / "diffusion_models" / "pyramid-flow-sd3" / "diffusion_transformer_768p"
    folder.mkdir(parents=True)
    assert not has_pyramid_dit(other)                 # a folder without its config is no model
    (folder / "config.json").write_text("{}")
    assert has_pyramid_dit(other)


# A stand-in for ComfyUI's main.py: answers /system_stats on --port until killed, and says its pid.
FAKE_COMFYUI = """
import http.server, json, os, pathlib, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
pathlib.Path(os.environ["FAKE_COMFYUI_PID"]).write_text(str(os.getpid()))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"system": {"comfyui_version": "0.0-fake", "python_version": "3"}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _fake_comfyui(tmp_path):
    """A ComfyUI folder whose main.py is :data:`FAKE_COMFYUI`, with a Pyramid DiT file (no stand-ins)."""
    import sys

    folder = tmp_path / "ComfyUI"
    (folder / "models" / "diffusion_models").mkdir(parents=True)
    (folder / "models" / "diffusion_models" / "pyramid_flow_miniflux_bf16_v2.safetensors").write_bytes(b"")
    (folder / "main.py").write_text(FAKE_COMFYUI)
    env = {**os.environ, "COMFYUI_DIR": str(folder), "COMFYUI_PYTHON": sys.executable,
           "FAKE_COMFYUI_PID": str(tmp_path / "pid")}
    return [sys.executable, str(REPO_ROOT / "scripts" / "serve.py")], env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_serve_stops_its_comfyui(tmp_path):
    command, env = _fake_comfyui(tmp_path)
    port = free_port()
    serve = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "[serve] open" not in line and time.monotonic() < deadline:
            line = serve.stdout.readline()
        assert f"open http://127.0.0.1:{port}" in line, line
        pid = int((tmp_path / "pid").read_text())
        assert _alive(pid)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "serve ended, its ComfyUI still runs"
        assert port_taken_by(port) is None
    finally:
        serve.kill()


def test_serve_refuses_a_port_that_is_taken_and_says_by_what(tmp_path):
    command, env = _fake_comfyui(tmp_path)
    port = free_port()
    other = subprocess.Popen([env["COMFYUI_PYTHON"], str(tmp_path / "ComfyUI" / "main.py"), "--port", str(port)],
                             env=env)
    try:
        deadline = time.monotonic() + 30
        while port_taken_by(port) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        run = subprocess.run([*command, "--port", str(port)], env={**env, "FAKE_COMFYUI_PID": str(tmp_path / "x")},
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2
        assert f"port {port} is taken by another ComfyUI (version 0.0-fake" in run.stderr
        assert not (tmp_path / "x").exists(), "a second ComfyUI was started"
    finally:
        other.kill()
        other.wait()
    with socket.socket() as plain:                # something that is not a web server
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        assert port_taken_by(plain.getsockname()[1]) == "another program"
