"""Quality against cost on the toy model: what a sampler or precision setting does to videos, not to tensors.

For each setting it samples the toy model (the committed ``toy_model/pyramid-flow-toy``, or
another folder written by ``scripts/train_toy_model.py --out DIR``) through the library's
pipelines and runs the checks of pyramid_core/toy/checks.py:

* ``t2v``: the prompted colour, in the prompted shape, moves the prompted way (every prompt of
  ``checks.T2V_CASES``, half of them held out of training, over ``--seeds`` seeds; ``t2v_held_out``
  is the rate of the held-out half);
* ``i2v``: frame 0 is the image, the object keeps its shape and colour and moves;
* ``continue``: the continuation keeps the clip's colour and direction of motion at the seam;

the last two from as many scenes (``checks.scene_for``) as text-to-video makes videos.

The settings: the steps per pyramid stage of ``--steps`` (with :class:`ToySettings`' guidance:
4 for the first frame, 2 for the video units), then at the largest of them the history variants
(recent units at full resolution, a cap on past latent frames) and each video guidance of
``--video-guidance`` (4: the video guidance the toy models were first judged at), all with the DiT in
fp32; then one row for each of ``--options``, at the largest step count: the DiT in fp16,
its linear weights stored in fp8 (``fp8_e4m3fn``, computed in fp32), or its blocks compiled with
``torch.compile`` (``compile``: the first videos include the compilation). The VAE stays in
``--vae-dtype``.

``--vae-ceiling`` adds a row of the same checks on the VAE's own reconstructions of rendered
clips (no DiT): the rates a DiT that generated each clip's exact latents would reach.

One JSON line per setting: the success rate of each check, the number of videos behind it, the
same rates per shape (``by_shape``: where the model fails), and the mean seconds per video
(sampling and decoding, this machine); ``--markdown`` then prints them as the model card's table.

    python benchmarks/toy_quality.py [--model DIR] [--seeds 4] [--steps 1,2,4,10] [--options fp16,fp8_e4m3fn,compile]
                                     [--video-guidance 4] [--vae-ceiling]
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
from pyramid_core.toy.model import QUALITY_FILE, ToyModel, ToySettings  # noqa: E402


def settings_grid(steps: list[int], video_guidances: list[float] = ()) -> list[ToySettings]:
    """Each step count with the default history and guidance, then at the largest step count the
    history variants and each of ``video_guidances``."""
    def at(n: int, **changes) -> ToySettings:
        return ToySettings(steps=(n,) * 3, video_steps=(n,) * 3, **changes)

    top = max(steps)
    return ([at(n) for n in steps]
            + [at(top, history=HistoryConfig(recent_units=recent, max_frames=frames))
               for recent, frames in ((2, None), (1, 1))]
            + [at(top, video_guidance=video_guidance) for video_guidance in video_guidances])


def label(settings: ToySettings) -> dict:
    """What a row says of its settings (the grid's steps are the same at every stage)."""
    return {"steps_per_stage": settings.steps[0], "recent_units": settings.history.recent_units,
            "history_frames": settings.history.max_frames, "video_guidance": settings.video_guidance}


def measure(model: ToyModel, settings: ToySettings, seeds: int) -> dict:
    """The rates of the three checks with ``settings`` over ``seeds`` seeds per prompt (and as
    many scenes), and the seconds per video."""
    started = time.perf_counter()
    t2v = [(case, seed, checks.check_text_to_video(model, case, seed, settings))
           for case in checks.T2V_CASES for seed in range(seeds)]
    scenes = [checks.scene_for(k) for k in range(len(t2v))]
    i2v = [checks.check_image_to_video(model, scene, k % seeds, settings) for k, scene in enumerate(scenes)]
    cont = [checks.check_continuation(model, scene, k % seeds, settings) for k, scene in enumerate(scenes)]
    return rates([(case, verdict) for case, _, verdict in t2v], scenes, i2v, cont, started)


def measure_reconstructions(model: ToyModel, seeds: int) -> dict:
    """The same checks on the VAE's reconstructions of rendered clips (:func:`checks.check_reconstruction`):
    a seeded scene of each prompt for text-to-video, the same scenes for the other two. The
    ceiling of any DiT on this VAE."""
    started = time.perf_counter()
    t2v = [(case, checks.check_reconstruction(model, checks.case_scene(case, seed))["t2v"])
           for case in checks.T2V_CASES for seed in range(seeds)]
    scenes = [checks.scene_for(k) for k in range(len(t2v))]
    judged = [checks.check_reconstruction(model, scene) for scene in scenes]
    return rates(t2v, scenes, [j["i2v"] for j in judged], [j["continue"] for j in judged], started)


def rates(t2v: list, scenes: list, i2v: list, cont: list, started: float) -> dict:
    """Success rates of (case, verdict) pairs for text-to-video and of the verdicts on
    ``scenes`` for image-to-video and continuation, overall and per shape (``by_shape``: where a
    model fails), and the seconds per video since ``started``."""
    runs = {"t2v": [(case[1], verdict) for case, verdict in t2v],
            "t2v_held_out": [(case[1], verdict) for case, verdict in t2v if checks.is_held_out(case)],
            "i2v": [(scene.shape, verdict) for scene, verdict in zip(scenes, i2v)],
            "continue": [(scene.shape, verdict) for scene, verdict in zip(scenes, cont)]}
    out, by_shape = {}, {}
    for name, judged in runs.items():
        out[name] = round(checks.success_rate(verdict for _, verdict in judged), 3)
        out[f"{name}_videos"] = len(judged)
        if name != "t2v_held_out":
            by_shape[name] = {shape: round(checks.success_rate(v for s, v in judged if s == shape), 3)
                              for shape in sorted({s for s, _ in judged})}
    videos = len(t2v) + len(i2v) + len(cont)
    out["seconds_per_video"] = round((time.perf_counter() - started) / videos, 3)
    out["by_shape"] = by_shape
    return out


OPTIONS = {"fp16": {"dtype": "fp16"}, "fp8_e4m3fn": {"dtype": "fp8_e4m3fn"}, "compile": {"compile": "default"}}


def markdown(rows: list[dict]) -> str:
    """The rows as the model card's table."""
    lines = ["| DiT | steps per stage | history | video guidance | text-to-video (held-out) | image-to-video "
             "| continuation | s / video |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["steps_per_stage"] is None:      # the VAE's reconstructions: no sampling
            steps, history, video_guidance = "--", "--", "--"
        else:
            steps, video_guidance = row["steps_per_stage"], f"{row['video_guidance']:g}"
            history = (f"{row['recent_units']} recent unit{'s' if row['recent_units'] > 1 else ''}, "
                       + ("all frames" if row["history_frames"] is None else f"{row['history_frames']} past frame(s)"))
        lines.append(f"| {row['dit']} | {steps} | {history} | {video_guidance} "
                     f"| {row['t2v']:.3f} ({row['t2v_held_out']:.3f}) "
                     f"| {row['i2v']:.3f} | {row['continue']:.3f} | {row['seconds_per_video']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "toy_model" / "pyramid-flow-toy",
                        help="a model folder written by scripts/train_toy_model.py (its --out; default: the committed one)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt / images / clips")
    parser.add_argument("--steps", default="1,2,4,10", help="steps per stage to compare")
    parser.add_argument("--options", default=",".join(OPTIONS),
                        help=f"precision and compile rows at the largest step count, of {', '.join(OPTIONS)} "
                             "(fp16 runs on the CPU, slowly; none: '')")
    parser.add_argument("--vae-dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--video-guidance", default="4",
                        help="video guidances (comma-separated) for rows at the largest step count, beside the "
                             f"default {ToySettings.video_guidance:g} (none: '')")
    parser.add_argument("--no-history-variants", action="store_true",
                        help="only the step counts of --steps: no history or video guidance rows")
    parser.add_argument("--vae-ceiling", action="store_true",
                        help="also a row of the same checks on the VAE's own reconstructions of rendered clips "
                             "(no DiT): the rates a DiT that generated each clip's exact latents would reach")
    parser.add_argument("--markdown", action="store_true", help="also print the rows as a markdown table")
    parser.add_argument("--write-quality", action="store_true",
                        help="write the fp32 row at the largest step count to MODEL/quality.json: the rates "
                             "the demo prints beside its verdicts")
    args = parser.parse_args()
    options = [o for o in args.options.split(",") if o]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        parser.error(f"--options {','.join(unknown)}: choose from {', '.join(OPTIONS)}")
    steps = [int(s) for s in args.steps.split(",")]
    grid = settings_grid(steps, [float(g) for g in args.video_guidance.split(",") if g])
    if args.no_history_variants:
        grid = grid[:len(steps)]
    top = grid[steps.index(max(steps))]     # the largest step count with the default settings
    runs = [("fp32", {}, grid)] + [(option, OPTIONS[option], [top]) for option in options]
    rows = []
    for name, kwargs, settings_list in runs:
        model = ToyModel(args.model, vae_dtype=args.vae_dtype, **kwargs)
        for settings in settings_list:
            rows.append({"benchmark": "toy_quality", "dit": name, "vae_dtype": args.vae_dtype, **label(settings),
                         **measure(model, settings, args.seeds)})
            print(json.dumps(rows[-1]), flush=True)
            if args.write_quality and name == "fp32" and settings is top:
                quality = {key: rows[-1][key] for key in rows[-1] if key.startswith(("t2v", "i2v", "continue"))}
                quality.update(seeds=args.seeds, steps_per_stage=settings.steps[0], guidance=settings.guidance,
                               video_guidance=settings.video_guidance,
                               written_by="python benchmarks/toy_quality.py --write-quality")
                (args.model / QUALITY_FILE).write_text(json.dumps(quality, indent=1) + "\n")
    if args.vae_ceiling:
        rows.append({"benchmark": "toy_quality", "dit": "none (VAE reconstructions)", "vae_dtype": args.vae_dtype,
                     "steps_per_stage": None, "recent_units": None, "history_frames": None, "video_guidance": None,
                     **measure_reconstructions(ToyModel(args.model, vae_dtype=args.vae_dtype), args.seeds)})
        print(json.dumps(rows[-1]), flush=True)
    if args.markdown:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
