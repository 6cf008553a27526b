"""Quality against cost on the toy model: what a sampler setting does to videos, not to tensors.

For each setting (steps per pyramid stage; history: recent units at full resolution, a cap on
past latent frames) it samples the toy model (the committed ``toy_model/pyramid-flow-toy``, or
another folder written by ``scripts/train_toy_model.py --out DIR``) through the library's
pipelines and runs the checks of pyramid_core/toy/checks.py:

* ``t2v``: the prompted colour moves the prompted way (every prompt of ``checks.T2V_CASES``,
  half of them held out of training, over ``--seeds`` seeds);
* ``i2v``: frame 0 is the image, the object keeps its shape and colour and moves;
* ``continue``: the continuation keeps the clip's colour and direction of motion at the seam;

the last two from as many scenes (``checks.scene_for``) as text-to-video makes videos.

One JSON line per setting: the success rate of each check, the number of videos behind it, and
the mean seconds per video (sampling and decoding, this machine, on the CPU; fp32 unless --dtypes
names others, one set of rows per DiT dtype).

    python benchmarks/toy_quality.py [--model DIR] [--seeds 5] [--steps 1,2,4,10] [--dtypes fp32,fp16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyramid_core.sampling import HistoryConfig  # noqa: E402
from pyramid_core.toy import checks  # noqa: E402
from pyramid_core.toy.model import ToyModel, ToySettings  # noqa: E402


def settings_grid(steps: list[int]) -> list[tuple[dict, ToySettings]]:
    """(label, settings): each step count with the default history, then history variants at the
    largest step count."""
    grid = [({"steps_per_stage": n, "recent_units": 1, "history_frames": None},
             ToySettings(steps=(n,) * 3, video_steps=(n,) * 3)) for n in steps]
    top = max(steps)
    for recent, frames in ((2, None), (1, 1)):
        grid.append(({"steps_per_stage": top, "recent_units": recent, "history_frames": frames},
                     ToySettings(steps=(top,) * 3, video_steps=(top,) * 3,
                                 history=HistoryConfig(recent_units=recent, max_frames=frames))))
    return grid


def measure(model: ToyModel, settings: ToySettings, seeds: int) -> dict:
    videos, started, rates = 0, time.perf_counter(), {}
    runs = {
        "t2v": [lambda s, c=c: checks.check_text_to_video(model, c, s, settings) for c in checks.T2V_CASES],
    }
    scenes = len(checks.T2V_CASES)
    runs["i2v"] = [lambda s, k=k: checks.check_image_to_video(model, checks.scene_for(k * seeds + s), s, settings)
                   for k in range(scenes)]
    runs["continue"] = [lambda s, k=k: checks.check_continuation(model, checks.scene_for(k * seeds + s), s, settings)
                        for k in range(scenes)]
    for name, makers in runs.items():
        verdicts = [make(seed) for make in makers for seed in range(seeds)]
        videos += len(verdicts)
        rates[name] = round(checks.success_rate(verdicts), 3)
        rates[f"{name}_videos"] = len(verdicts)
    rates["seconds_per_video"] = round((time.perf_counter() - started) / videos, 3)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "toy_model" / "pyramid-flow-toy",
                        help="a model folder written by scripts/train_toy_model.py (its --out; default: the committed one)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per prompt / images / clips")
    parser.add_argument("--steps", default="1,2,4,10", help="steps per stage to compare")
    parser.add_argument("--dtypes", default="fp32",
                        help="DiT dtypes to compare, e.g. fp32,fp16,fp8_e4m3fn (fp16 runs on the CPU, slowly; "
                             "fp8_e4m3fn: fp8 linear weights computed in fp32; the VAE stays in --vae-dtype)")
    parser.add_argument("--vae-dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--no-history-variants", action="store_true", help="only the step counts of --steps")
    args = parser.parse_args()
    grid = settings_grid([int(s) for s in args.steps.split(",")])
    if args.no_history_variants:
        grid = [(label, settings) for label, settings in grid if label["recent_units"] == 1
                and label["history_frames"] is None]
    for dtype in args.dtypes.split(","):
        model = ToyModel(args.model, dtype=dtype, vae_dtype=args.vae_dtype)
        for label, settings in grid:
            print(json.dumps({"benchmark": "toy_quality", "dtype": dtype, "vae_dtype": args.vae_dtype, **label,
                              **measure(model, settings, args.seeds)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
