"""The README's main job: a real ComfyUI with this pack runs the shipped workflows to videos.

Starts a headless ComfyUI (``comfyui_harness.ComfyUIServer``, latent previews on) with this
pack, and runs each API workflow in ``workflows/api/``. Models: ``--models DIR`` points at a
ComfyUI ``models/`` folder holding the real files the workflows name (see the README);
without it the demo writes tiny random-weight stand-ins under those names and shrinks the
workflows (sizes, steps) so that everything runs on a CPU in about a minute -- the video is
noise, the path through every node is the real one. Videos are copied to ``--out``.

Every workflow runs even when one fails; a table (workflow, status, seconds, output) ends
the run, and the exit code is 1 if any workflow failed.

    python scripts/demo.py [--models ~/ComfyUI/models] [--out output] [t2v_384p ...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfyui_harness import ComfyUIError, ComfyUIServer, output_files  # noqa: E402
import tiny_checkpoints  # noqa: E402

PREVIEWS = ("--preview-method", "auto")


@dataclass
class Outcome:
    workflow: str
    status: str = "ok"
    seconds: float = 0.0
    output: str = ""
    error: str = ""


def run_workflow(server: ComfyUIServer, name: str, real_models: bool, out: Path, timeout: float) -> Outcome:
    """Run one shipped workflow; never raises (a failure is recorded in the outcome)."""
    outcome = Outcome(name)
    started = time.monotonic()
    try:
        prompt = tiny_checkpoints.load_api_workflow(f"pyramid_flow_{name}")
        if not real_models:
            prompt = tiny_checkpoints.shrink(prompt)
        entry = server.run(prompt, timeout=timeout)
        saved = [item for item in output_files(entry) if item.get("type") == "output"]
        if not saved:
            raise ComfyUIError("the workflow finished without writing a file")
        for item in saved:
            target = out / item["filename"]
            shutil.copyfile(server.output_dir / item.get("subfolder", "") / item["filename"], target)
            outcome.output = str(target)
    except Exception as err:  # noqa: BLE001 -- one workflow's failure must not stop the others
        outcome.status, outcome.error = "FAILED", (str(err).strip().splitlines() or [repr(err)])[0][:300]
    outcome.seconds = time.monotonic() - started
    return outcome


def print_table(outcomes: list[Outcome]) -> None:
    rows = [("workflow", "status", "seconds", "output")] + [
        (o.workflow, o.status, f"{o.seconds:.1f}", o.output or o.error) for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print()
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])


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
    if args.models and not args.models.is_dir():
        parser.error(f"--models {args.models}: no such folder (a ComfyUI models/ folder)")

    args.out.mkdir(parents=True, exist_ok=True)
    with ComfyUIServer(extra_args=PREVIEWS) as server:
        if args.models:
            server.models_dir.rmdir()
            server.models_dir.symlink_to(args.models.resolve(), target_is_directory=True)
            tiny_checkpoints.write_inputs(server.input_dir)
        else:
            tiny_checkpoints.write_stand_ins(server.models_dir, server.input_dir)
        print(f"ComfyUI {server.url} with pyramid-flow ({'real models' if args.models else 'tiny stand-ins'})")
        outcomes = []
        for name in args.workflows or available:
            outcomes.append(run_workflow(server, name, bool(args.models), args.out, args.timeout))
            last = outcomes[-1]
            print(f"{name}: {last.status} in {last.seconds:.1f} s {last.output or last.error}", flush=True)
        if any(o.status != "ok" for o in outcomes):
            print(f"\nthe last lines of the server log:\n{server.log_tail(40)}")
    print_table(outcomes)
    failed = [o.workflow for o in outcomes if o.status != "ok"]
    if failed:
        print(f"\n{len(failed)} of {len(outcomes)} workflows failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
