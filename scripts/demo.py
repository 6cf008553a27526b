"""The README's main job: a real ComfyUI with this pack runs the shipped workflows to videos.

Starts a headless ComfyUI (``comfyui_harness.ComfyUIServer``) with this pack, and runs each
API workflow in ``workflows/api/``. Models: ``--models DIR`` points at a ComfyUI
``models/`` folder holding the real files the workflows name (see the README); without it
the demo writes tiny random-weight stand-ins under those names and shrinks the workflows
(sizes, steps) so that everything runs on a CPU in about a minute -- the video is noise,
the path through every node is the real one. Videos are copied to ``--out``.

    python scripts/demo.py [--models ~/ComfyUI/models] [--out output] [t2v_384p ...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfyui_harness import ComfyUIServer, output_files  # noqa: E402
import tiny_checkpoints  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    available = sorted(p.stem.removeprefix("pyramid_flow_") for p in tiny_checkpoints.WORKFLOWS.glob("*.json"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="*", metavar="NAME", help=f"default: all of {', '.join(available)}")
    parser.add_argument("--models", type=Path, help="a ComfyUI models/ folder with the real checkpoints")
    parser.add_argument("--out", type=Path, default=Path("output"), help="where the videos go (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per workflow")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.workflows) - set(available))
    if unknown:
        parser.error(f"unknown workflow(s) {unknown}; choose from {available}")

    args.out.mkdir(parents=True, exist_ok=True)
    with ComfyUIServer() as server:
        if args.models:
            server.models_dir.rmdir()
            server.models_dir.symlink_to(args.models.resolve(), target_is_directory=True)
            tiny_checkpoints.write_inputs(server.input_dir)
        else:
            tiny_checkpoints.write_stand_ins(server.models_dir, server.input_dir)
        print(f"ComfyUI {server.url} with pyramid-flow ({'real models' if args.models else 'tiny stand-ins'})")
        for name in args.workflows or available:
            prompt = tiny_checkpoints.load_api_workflow(f"pyramid_flow_{name}")
            if not args.models:
                prompt = tiny_checkpoints.shrink(prompt)
            started = time.monotonic()
            entry = server.run(prompt, timeout=args.timeout)
            for item in output_files(entry):
                if item.get("type") == "output":
                    target = args.out / item["filename"]
                    shutil.copyfile(server.output_dir / item.get("subfolder", "") / item["filename"], target)
                    print(f"{name}: {target} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
