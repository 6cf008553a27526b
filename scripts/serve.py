"""``bash scripts/comfyui_env.sh serve``: the ComfyUI page with this pack, for a person to use.

    python scripts/serve.py [--stand-ins] [--port 8188]

Models are the ComfyUI's own (``models/`` of the pinned ComfyUI in ``.cache/comfyui/``, or of
``COMFYUI_DIR``). When none of its diffusion models is a Pyramid Flow DiT -- as on a fresh
machine, where the real weights are not downloaded -- or with ``--stand-ins``, the page is
served from ``.cache/stand-ins/`` instead: the toy model (``toy_model/pyramid-flow-toy``, trained
on the toy world of moving shapes) under the file names the workflows use, and a template
browser whose templates are the shipped workflows set up for it (:func:`toy_template`), so that
each runs with one click. Why not the shipped graphs themselves: they load the text encoders
with the core DualCLIPLoader (t5xxl + clip_l), which always builds a full-size T5-XXL, so no
stand-in file can serve them; the toy versions use the Pyramid Flow Text Encoder Loader.
They open at the demo's seed (one for all); how often the toy model draws what a prompt asks,
over many seeds, is in its MODEL_CARD.md. Prompts of the toy
world's words (colours red, green, blue, yellow; square, circle, triangle; right, left, up,
down; black, gray, striped backgrounds) are what it can draw. Latent previews are on
(``--preview-method auto``), in the toy VAE's own colours.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfyui_harness import (PACK_NAME, PACK_ROOT, ComfyUIError, comfyui_location,  # noqa: E402
                             prepare_base_dir, wait_until_ready)
import tiny_checkpoints  # noqa: E402

STAND_INS = PACK_ROOT / ".cache" / "stand-ins"
DIT_SUFFIXES = (".safetensors", ".sft", ".bin", ".pt", ".pth")
SERVE_ARGS = ("--preview-method", "auto")    # the samplers' latent previews on the nodes
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
    """A ComfyUI base directory with the toy model under the workflows' file names, the toy
    inputs, and this pack as a shadow pack (:func:`write_shadow_pack`) whose templates are
    written once the server is up (:func:`write_toy_templates`)."""
    write_shadow_pack(base / "custom_nodes" / PACK_NAME)
    prepare_base_dir(base)                                 # the other folders; keeps the shadow pack
    tiny_checkpoints.write_stand_ins(base / "models", base / "input", toy=True)
    # the Workflows-panel copies older versions of serve wrote: the templates replace them
    shutil.rmtree(base / "user" / "default" / "workflows" / "stand-ins", ignore_errors=True)


def write_shadow_pack(target: Path) -> Path:
    """This pack as ComfyUI loads it from ``target``, but with a ``workflows/`` folder of its own.

    ComfyUI's template browser lists a pack's ``workflows/*.json``. The shipped templates load
    the text encoders with the core DualCLIPLoader (t5xxl + clip_l), which always builds a
    full-size T5-XXL (9.3 GB), so no stand-in file can serve them: on the toy model the
    templates must be other graphs. ``target`` holds a link to every top-level entry of the
    pack but ``workflows/`` (and hidden ones: ``.cache`` holds this very folder), and a real
    ``workflows/`` with the thumbnails; the graphs come from :func:`write_toy_templates`.
    """
    if target.is_symlink():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)            # only links and written graphs: never the pack's files
    (target / "workflows").mkdir(parents=True)
    for entry in sorted(PACK_ROOT.iterdir()):
        if entry.name != "workflows" and not entry.name.startswith("."):
            (target / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for thumbnail in sorted(tiny_checkpoints.WORKFLOWS.parent.glob("*.jpg")):     # copies: aiohttp's static
        shutil.copyfile(thumbnail, target / "workflows" / thumbnail.name)         # route refuses links
    return target


TOY_NOTE = """**Toy version of this template**, set up by `serve` (no Pyramid Flow DiT in \
`models/diffusion_models`, or `--stand-ins`): the pack's toy model stands in under the file names loaded \
here. It draws one red, green, blue or yellow square, circle or triangle moving right, left, up or down on a \
black, gray or striped background, 128x128 px, and knows only those words.

For real videos: `python -m pyramid_core download {variant} --comfyui <your ComfyUI folder>`, then start \
`serve` again."""
NOTE_SIZE = (300, 330)


def toy_template(name: str, object_info: dict) -> dict:
    """The shipped UI workflow ``name`` made to run on the toy model (``tiny_checkpoints``' toy
    edits, at the demo's seed (``TOY_SEED``): its text encoders, size, length, steps and preview colours),
    with a note saying so, laid out anew, and its ``models`` list cut to the files it still
    loads (the stand-ins: no download offered for the text encoders it no longer uses)."""
    from pyramid_core.hub.catalog import known_files
    from ui_workflows import tidy_and_fit

    workflow = tiny_checkpoints.shrink_ui(name, object_info, seed=tiny_checkpoints.TOY_SEED, toy=True)
    values = {value for node in workflow["nodes"] for value in node.get("widgets_values") or [] if isinstance(value, str)}
    models = [entry for entry in workflow.get("models", []) if entry["name"] in values]
    workflow.pop("models", None)
    if models:
        workflow["models"] = models
    dit_name = next(node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "PyramidFlowDiTLoader")
    note_id = max(node["id"] for node in workflow["nodes"]) + 1
    workflow["nodes"].append({
        "id": note_id, "type": "MarkdownNote", "pos": [0.0, 0.0], "size": list(NOTE_SIZE),   # placed by the layout
        "flags": {}, "order": len(workflow["nodes"]), "mode": 0, "inputs": [], "outputs": [],
        "title": "Toy model", "properties": {},
        "widgets_values": [TOY_NOTE.format(variant=known_files()[dit_name][1])],
        "color": "#232", "bgcolor": "#353"})
    workflow["last_node_id"] = max(workflow.get("last_node_id", 0), note_id)
    tidy_and_fit(workflow)
    return workflow


def write_toy_templates(url: str, base: Path) -> list[Path]:
    """:func:`toy_template` of every shipped workflow into the shadow pack's ``workflows/``,
    under the shipped names (what the template browser lists); needs the running server's
    ``/object_info``."""
    with urllib.request.urlopen(url + "/object_info", timeout=60) as response:
        object_info = json.load(response)
    folder = base / "custom_nodes" / PACK_NAME / "workflows"
    written = []
    for path in sorted(tiny_checkpoints.WORKFLOWS.glob("*.json")):
        target = folder / path.name
        target.write_text(json.dumps(toy_template(path.stem, object_info), indent=1) + "\n")
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
               "--disable-auto-launch", *SERVE_ARGS, *args.extra]
    taken = port_taken_by(args.port)
    if taken:
        print(f"[serve] port {args.port} is taken by {taken} on 127.0.0.1: stop it, or choose another port "
              f"(bash scripts/comfyui_env.sh serve --port {args.port + 1})", file=sys.stderr, flush=True)
        return 2
    stand_ins = args.stand_ins or not has_pyramid_dit(comfy_dir / "models")
    if stand_ins:
        why = "--stand-ins" if args.stand_ins else f"no Pyramid Flow DiT in {comfy_dir / 'models' / 'diffusion_models'}"
        print(f"[serve] {why}: serving the toy model (moving coloured shapes, 128x128) from {STAND_INS}. The "
              "template browser (Workflow > Browse Templates > pyramid-flow) offers each template set up for it. "
              "For real videos: python -m pyramid_core download miniflux-384p --comfyui "
              f"{comfy_dir} (README, 'Get the weights'), then serve again.", flush=True)
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
            written = write_toy_templates(url, STAND_INS)
            print(f"[serve] {len(written)} templates set up for the toy model", flush=True)
        print(f"[serve] open {url} (Ctrl-C stops)", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(process)


if __name__ == "__main__":
    sys.exit(main())
