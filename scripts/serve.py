"""``bash scripts/comfyui_env.sh serve``: the ComfyUI page with this pack, for a person to use.

    python scripts/serve.py [--stand-ins] [--port 8188]

Models are the ComfyUI's own (``models/`` of the pinned ComfyUI in ``.cache/comfyui/``, or of
``COMFYUI_DIR``). When none of its diffusion models is a Pyramid Flow DiT -- as on a fresh
machine, where the real weights are not downloaded -- or with ``--stand-ins``, the page is
served from ``.cache/stand-ins/`` instead: the toy model (``toy_model/pyramid-flow-toy``, trained
on the toy world of moving shapes) under the file names the workflows use, and, in the page's
Workflows panel, the shipped workflows made to ask it for toy-world scenes ("stand-ins/...").
The shipped templates load the text encoders with the core DualCLIPLoader (t5xxl + clip_l),
which always builds a full-size T5-XXL, so no stand-in can serve them; the stand-in workflows
use the Pyramid Flow Text Encoder Loader instead. At the seed they open with (the demo's) their
videos show the prompted shape moving the prompted way; other seeds, less often (the toy
model's MODEL_CARD.md). Prompts of the toy world's words (colours red, green, blue, yellow;
square, circle, triangle; right, left, up, down; black, gray, striped backgrounds) are what it
can draw. Latent previews are on (``--preview-method auto``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfyui_harness import (PACK_ROOT, ComfyUIError, comfyui_location, prepare_base_dir,  # noqa: E402
                             wait_until_ready)
import tiny_checkpoints  # noqa: E402

STAND_INS = PACK_ROOT / ".cache" / "stand-ins"
DIT_SUFFIXES = (".safetensors", ".sft", ".bin", ".pt", ".pth")
STARTUP_TIMEOUT = 180.0     # seconds; a first start unpacks the frontend and imports torch


def has_pyramid_dit(models_dir: Path) -> bool:
    """Whether ``models_dir/diffusion_models`` holds a Pyramid Flow DiT (a file named so, or an
    official ``diffusion_transformer_*`` folder)."""
    root = models_dir / "diffusion_models"
    if not root.is_dir():
        return False
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in DIT_SUFFIXES and "pyramid" in path.name.lower():
            return True
        if path.is_dir() and path.name.startswith("diffusion_transformer") and (path / "config.json").is_file():
            return True
    return False


def prepare_stand_ins(base: Path) -> None:
    """A ComfyUI base directory with the stand-in models, input media and this pack."""
    prepare_base_dir(base)
    tiny_checkpoints.write_stand_ins(base / "models", base / "input", toy=True)


def write_stand_in_workflows(url: str, base: Path) -> list[Path]:
    """The shipped workflows made to run on the toy model, in the page's Workflows panel."""
    with urllib.request.urlopen(url + "/object_info", timeout=60) as response:
        object_info = json.load(response)
    folder = base / "user" / "default" / "workflows" / "stand-ins"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(tiny_checkpoints.WORKFLOWS.glob("*.json")):
        target = folder / path.name
        workflow = tiny_checkpoints.shrink_ui(path.stem, object_info, seed=tiny_checkpoints.TOY_DEMO_SEEDS[path.stem],
                                              toy=True)
        target.write_text(json.dumps(workflow, indent=1))
        written.append(target)
    return written


def port_taken_by(port: int) -> str | None:
    """What already listens on 127.0.0.1:``port`` (None: nothing), in words for the user."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex(("127.0.0.1", port)) != 0:
            return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=5) as response:
            stats = json.load(response).get("system", {})
        return f"another ComfyUI (version {stats.get('comfyui_version', '?')}, python {stats.get('python_version', '?')})"
    except (OSError, ValueError):
        return "another program"


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """End ComfyUI and everything it started (its own process group): SIGINT, as Ctrl-C would,
    then SIGKILL after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt          # unwinds main(), whose finally stops ComfyUI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stand-ins", action="store_true", help="serve the tiny stand-ins even if real models exist")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8188)))
    parser.add_argument("extra", nargs="*", help="more ComfyUI arguments (after --)")
    args = parser.parse_args(argv)
    comfy_dir, python = comfyui_location()
    command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(args.port),
               "--disable-auto-launch", "--preview-method", "auto", *args.extra]
    taken = port_taken_by(args.port)
    if taken:
        print(f"[serve] port {args.port} is taken by {taken} on 127.0.0.1: stop it, or choose another port "
              f"(bash scripts/comfyui_env.sh serve --port {args.port + 1})", file=sys.stderr, flush=True)
        return 2
    stand_ins = args.stand_ins or not has_pyramid_dit(comfy_dir / "models")
    if stand_ins:
        if not args.stand_ins:
            print(f"[serve] no Pyramid Flow DiT in {comfy_dir / 'models' / 'diffusion_models'}: serving the toy "
                  f"model (moving coloured shapes, 128x128) from {STAND_INS}. Open the stand-in workflows from "
                  "the Workflows panel (stand-ins/...); the templates need the real models: "
                  f"python -m pyramid_core download miniflux-384p --comfyui {comfy_dir} (README, 'Get the "
                  "weights').", flush=True)
        prepare_stand_ins(STAND_INS)
        command += ["--base-directory", str(STAND_INS)]
    url = f"http://127.0.0.1:{args.port}"
    # ComfyUI in a process group of its own, which stop() ends whole: a SIGTERM to serve (a
    # service manager, `kill`) ends it too, instead of leaving it serving the port.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    process = subprocess.Popen(command, cwd=comfy_dir, start_new_session=True)
    try:
        try:
            wait_until_ready(url, process, STARTUP_TIMEOUT)
        except ComfyUIError as err:
            raise SystemExit(f"[serve] {err}") from None
        if stand_ins:
            written = write_stand_in_workflows(url, STAND_INS)
            print(f"[serve] {len(written)} stand-in workflows in the Workflows panel under stand-ins/", flush=True)
        print(f"[serve] open {url} (Ctrl-C stops)", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(process)


if __name__ == "__main__":
    sys.exit(main())
