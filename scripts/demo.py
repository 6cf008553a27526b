"""The README's main job: a real ComfyUI with this pack runs the shipped workflows to videos.

Starts a headless ComfyUI (``comfyui_harness.ComfyUIServer``, latent previews on) with this
pack, and runs each API workflow in ``workflows/api/``. Models: ``--models DIR`` points at a
ComfyUI ``models/`` folder holding the real files the workflows name (see the README);
without it the demo writes the toy model (``toy_model/pyramid-flow-toy``, trained on the toy
world by ``scripts/train_toy_model.py``) under those names and makes each workflow ask it for a
toy-world scene at 128x128 px (prompt, size, length, steps: ``tiny_checkpoints.TOY_CASES``),
at one seed for all (``--seed``), so that everything runs on a CPU in a minute. Each toy video
is then judged by the toy model's own checks (the prompted colour and shape moving the prompted
way, frame 0 being the image, ...: ``tiny_checkpoints.judge_toy_output``), and the table shows
the verdict beside the model's success rate for that kind of video over many seeds (its
``quality.json``), so that one unlucky seed reads as what it is.
``--random-stand-ins`` uses untrained tiny weights instead (videos of noise, in seconds).
Videos are copied to ``--out``.

Every workflow runs even when one fails; a table (workflow, status, seconds, output, and for
the toy model the verdict) ends the run, and the exit code is 1 if any workflow failed (a
verdict of the toy model's checks does not change it: that is the model's quality, not the
pack's function).

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
    judged: str = ""        # the toy model's checks on the output, and the model's rate for them


# Which of the toy model's rates (quality.json, benchmarks/toy_quality.py) a workflow's verdict
# stands beside: that of the library's check its judgement is.
RATE_OF = {"t2v_384p": "t2v", "t2v_768p": "t2v", "t2v_per_stage": "t2v", "i2v_384p": "i2v",
           "continue_384p": "continue"}
RATE_NAMES = {"t2v": "text-to-video", "i2v": "image-to-video", "continue": "continuation"}


def verdict_text(name: str, output: Path, rates: dict) -> str:
    """'shows it' or 'misses it (reason)' for the toy model's output of workflow ``name``, with
    the model's success rate for that check when ``rates`` has it."""
    verdict = tiny_checkpoints.judge_toy_output(f"pyramid_flow_{name}", tiny_checkpoints.read_saved(output))
    text = "shows it" if verdict.ok else f"misses it ({verdict.reasons[0]})"
    rate = rates.get(RATE_OF.get(name, ""))
    return text + (f"; the model's {RATE_NAMES[RATE_OF[name]]} rate: {rate:.0%}" if rate is not None else "")


def run_workflow(server: ComfyUIServer, name: str, real_models: bool, out: Path, timeout: float,
                 toy: bool = True, seed: int = tiny_checkpoints.TOY_SEED, rates: dict | None = None) -> Outcome:
    """Run one shipped workflow; never raises (a failure is recorded in the outcome). On the toy
    model (``toy`` without ``real_models``) at ``seed``, with its output judged."""
    outcome = Outcome(name)
    started = time.monotonic()
    on_toy = toy and not real_models
    try:
        prompt = tiny_checkpoints.load_api_workflow(f"pyramid_flow_{name}")
        if on_toy:
            prompt = tiny_checkpoints.shrink(prompt, seed=seed, toy=f"pyramid_flow_{name}")
        elif not real_models:
            prompt = tiny_checkpoints.shrink(prompt)
        entry = server.run(prompt, timeout=timeout)
        saved = [item for item in output_files(entry) if item.get("type") == "output"]
        if not saved:
            raise ComfyUIError("the workflow finished without writing a file")
        for item in saved:
            target = out / item["filename"]
            shutil.copyfile(server.output_dir / item.get("subfolder", "") / item["filename"], target)
            outcome.output = str(target)
        if on_toy:
            outcome.judged = verdict_text(name, Path(outcome.output), rates or {})
    except Exception as err:  # noqa: BLE001 -- one workflow's failure must not stop the others
        outcome.status, outcome.error = "FAILED", (str(err).strip().splitlines() or [repr(err)])[0][:300]
    outcome.seconds = time.monotonic() - started
    return outcome


def write_thumbnail(output: Path, target: Path, size: int = 256) -> None:
    """The middle frame of a saved video (or the saved image), ``size`` px wide, as a JPEG: the
    picture ComfyUI's template browser shows beside a workflow of the same name."""
    from PIL import Image

    if output.suffix == ".png":
        with Image.open(output) as image:
            frame = image.convert("RGB")
    else:
        from pyramid_core.video_io import read_video

        frames, _ = read_video(output)
        frame = Image.fromarray(frames[len(frames) // 2].numpy())
    frame.resize((size, round(size * frame.height / frame.width)), Image.BICUBIC).save(target, quality=90)


def print_table(outcomes: list[Outcome]) -> None:
    rows = [("workflow", "status", "seconds", "output")] + [
        (o.workflow, o.status, f"{o.seconds:.1f}", o.output or o.error) for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print()
    for row, outcome in zip(rows, [None, *outcomes]):
        judged = f"  toy model's checks: {outcome.judged}" if outcome and outcome.judged else ""
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3] + judged)


def main(argv: list[str] | None = None) -> int:
    available = sorted(p.stem.removeprefix("pyramid_flow_") for p in tiny_checkpoints.WORKFLOWS.glob("*.json"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="*", metavar="NAME", help=f"default: all of {', '.join(available)}")
    parser.add_argument("--models", type=Path, help="a ComfyUI models/ folder with the real checkpoints")
    parser.add_argument("--out", type=Path, default=Path("output"), help="where the videos go (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per workflow")
    parser.add_argument("--thumbnails", type=Path, metavar="DIR",
                        help="also write each workflow's template thumbnail (<workflow>.jpg) here, e.g. workflows")
    parser.add_argument("--seed", type=int, default=tiny_checkpoints.TOY_SEED,
                        help="the toy model's seed for every workflow (default: %(default)s)")
    parser.add_argument("--random-stand-ins", action="store_true",
                        help="untrained tiny weights instead of the toy model (noise, but faster)")
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
            tiny_checkpoints.write_stand_ins(server.models_dir, server.input_dir, toy=not args.random_stand_ins)
        kind = "real models" if args.models else "random stand-ins" if args.random_stand_ins else "the toy model"
        print(f"ComfyUI {server.url} with pyramid-flow ({kind})")
        outcomes, rates = [], tiny_checkpoints.toy_quality()
        for name in args.workflows or available:
            outcomes.append(run_workflow(server, name, bool(args.models), args.out, args.timeout,
                                         toy=not args.random_stand_ins, seed=args.seed, rates=rates))
            last = outcomes[-1]
            if args.thumbnails and last.status == "ok":
                write_thumbnail(Path(last.output), args.thumbnails / f"pyramid_flow_{name}.jpg")
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
