"""Train the toy Pyramid Flow model on the toy world, with the pack's own CLI, on a CPU.

    python scripts/train_toy_model.py [--out toy_model/pyramid-flow-toy] [--work runs/toy/work]

Every step is a ``python -m pyramid_core`` command (printed before it runs), as a user would
run it on their own videos:

1. render the toy world (:mod:`pyramid_core.toy.world`): ``--clips`` clips per (colour, shape,
   direction, background) over every training combination, as 128x128 mp4s + annotation JSONL,
   and ``--vae-clips`` 64x64 windows of the same world with 1-2 shapes each for the VAE (a
   convolutional VAE trained on windows encodes whole frames at a quarter of the training cost;
   on whole frames with one small shape it learns the background first and takes thousands of
   steps to notice the shape; in a window a shape covers a third of the picture or more);
2. write the tiny text encoders (random, frozen; the toy world's words as their vocabulary);
3. ``train-vae``: a small causal VAE (8x spatial, 8x temporal, 16 latent channels), MSE + KL,
   first on still frames (``num_frames=1``: a large batch of cheap steps in which the codec
   learns colours and outlines), then on whole 17-frame clips from those weights (the temporal
   compression, and a unit that follows another, which the decoder meets in every video);
4. give the VAE's latent channels (exactly) the mean and spread the variant's latent
   normalisation expects, each channel its own (:func:`normalize_latent_channels`, which also
   makes its posterior a point mass at the mean, so that the samplers' encoders give what the
   DiT learned from); ``extract-latents`` of every clip with that VAE (the posterior means),
   ``extract-text`` of every caption (each caption once as written and once with the prompt
   suffix the samplers append, so the model follows both) and of the empty prompt (the null
   text of classifier-free guidance);
5. ``train-dit``: a small miniFLUX-layout DiT with the pyramid flow-matching objective, in two
   phases: first on the clips' first frames only (``num_frames=1``: text-to-image, where the
   shape is drawn, at 60-70% of a video step's cost), then from those weights on whole clips
   with the temporal pyramid (autoregressive units with a corrupted history); ``--dit-image-batch``
   first frames, then ``--dit-batch`` clips a step (of which a quarter train the top stage, with
   ``sample_ratios`` 1, 2, 1);
6. export both in fp16 with the text encoders into one official-layout folder, and write its
   ``training.json`` (commands, steps, losses, CPU and wall seconds);
7. ``fit-preview``: the exported VAE's own latent preview colours, ``preview.json`` in that
   folder (``--preview-only`` does only this, for a model already in ``--out``).

Everything is seeded: the same command gives the same data and the same training run on the
same software (training on another CPU may round differently). ``--vae-from WORK`` takes the
VAE an earlier run trained (its ``--work`` folder, or ``--vae-from MODEL``: the VAE a model
folder this script wrote ships, such as the committed one) and runs the later steps only, to try
DiT settings on one VAE; ``--dit-images-from WORK`` (with it) takes that run's first-frame DiT as
well and trains the clip phase only, with any ``--dit-clip-setting KEY=VALUE`` of ``train-dit``
to try. The record still counts the reused phases' seconds.
``training.json`` records the wall and CPU time of each phase on the machine that made it;
``benchmarks/toy_quality.py --model OUT`` says how often its videos show what was asked.

The committed ``toy_model/pyramid-flow-toy`` is this script's output with its defaults (120
minutes of wall time on a 2-core machine, 55 of them the VAE's, which an earlier run with the same
settings trained and ``--vae-from`` reused; the budget is 2 hours, and the same machine ran the
DiT steps up to 40% slower on other days). Its MODEL_CARD.md states what it can and cannot do.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from pyramid_core.toy import world  # noqa: E402
from pyramid_core.training.data import read_jsonl, write_jsonl  # noqa: E402
from pyramid_core.training.synthetic import write_video  # noqa: E402
from pyramid_core.variants import PROMPT_SUFFIX  # noqa: E402

import tiny_checkpoints  # noqa: E402

TEXT_WIDTH, POOLED_WIDTH = tiny_checkpoints.T5_WIDTH, tiny_checkpoints.CLIP_WIDTH

# The released causal VAE's block layout at a quarter of its depth and an eighth of its width.
VAE_CONFIG = {
    "encoder_in_channels": 3, "encoder_out_channels": 16, "encoder_layers_per_block": [1, 1, 1, 1],
    "encoder_down_block_types": ["DownEncoderBlockCausal3D"] * 4, "encoder_block_out_channels": [16, 32, 64, 64],
    "encoder_spatial_down_sample": [True, True, True, False], "encoder_temporal_down_sample": [True, True, True, False],
    "encoder_block_dropout": [0.0] * 4, "encoder_act_fn": "silu", "encoder_norm_num_groups": 8,
    "encoder_double_z": True, "encoder_type": "causal_vae_conv",
    "decoder_in_channels": 16, "decoder_out_channels": 3, "decoder_layers_per_block": [1, 1, 1, 1],
    "decoder_up_block_types": ["UpDecoderBlockCausal3D"] * 4, "decoder_block_out_channels": [16, 32, 64, 64],
    "decoder_spatial_up_sample": [True, True, True, False], "decoder_temporal_up_sample": [True, True, True, False],
    "decoder_block_dropout": [0.0] * 4, "decoder_act_fn": "silu", "decoder_norm_num_groups": 8,
    "decoder_type": "causal_vae_conv", "sample_size": 64, "scaling_factor": 0.13025, "add_post_quant_conv": True,
    "interpolate": False, "downsample_scale": 8, "_class_name": "CausalVideoVAE",
}
# miniFLUX's layout (double-stream then single-stream blocks, 2x2 latent patches, 3-axis RoPE)
# with 2 + 4 blocks of 4 heads x 32 instead of 8 + 16 of 30 x 64.
DIT_CONFIG = {
    "_class_name": "PyramidFluxTransformer", "patch_size": 1, "in_channels": 64, "num_layers": 2,
    "num_single_layers": 4, "attention_head_dim": 32, "num_attention_heads": 4,
    "joint_attention_dim": TEXT_WIDTH, "pooled_projection_dim": POOLED_WIDTH, "axes_dims_rope": [8, 12, 12],
    "use_flash_attn": False, "use_temporal_causal": True, "interp_condition_pos": True,
    "use_gradient_checkpointing": False, "gradient_checkpointing_ratio": 0.6,
}
VARIANT = "miniflux-384p"      # its latent normalisation and 3-stage scheduler; the name carries "384p"
DIT_FOLDER = "diffusion_transformer_384p"
TEXT_FOLDERS = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
PREVIEW_FILE = "preview.json"     # fit-preview's latent-to-RGB factors for the toy VAE
PHASE_SUMMARY = "summary.json"    # each training phase's losses, command and seconds, for reuse


def render_dataset(folder: Path, clips: int, seed: int, combinations: int | None = None) -> Path:
    """``clips`` mp4s per training (colour, shape, direction) x background, and their JSONL
    (the first ``combinations`` combinations only, when given: for a quick smoke run)."""
    rng = np.random.default_rng(seed)
    rows = []
    for color, shape, direction in world.combinations(held_out=False)[:combinations]:
        for background in world.BACKGROUNDS:
            for _ in range(clips):
                scene = world.random_scene(rng, color, shape, direction, background)
                rel = f"videos/{len(rows):05d}.mp4"
                write_video(folder / rel, world.render(scene), world.FPS)
                rows.append({"video": rel, "text": scene.caption})
    anno = folder / "clips.jsonl"
    write_jsonl(anno, rows)
    return anno


def render_vae_dataset(folder: Path, clips: int, seed: int) -> Path:
    """``clips`` mp4s of 1-2 shapes each in a ``world.VAE_CROP`` px window (:func:`world.busy_scene`)
    and their JSONL: the VAE's data."""
    rng = np.random.default_rng(seed + 1)
    rows = []
    for i in range(clips):
        rel = f"busy/{i:05d}.mp4"
        scenes = world.busy_scene(rng, int(rng.integers(1, 3)))
        write_video(folder / rel, world.render(scenes, width=world.VAE_CROP, height=world.VAE_CROP), world.FPS)
        rows.append({"video": rel, "text": ""})
    anno = folder / "busy.jsonl"
    write_jsonl(anno, rows)
    return anno


def with_suffixed_captions(latents_jsonl: Path, out: Path) -> Path:
    """Each latent row twice: its caption as written and with the samplers' prompt suffix."""
    rows = read_jsonl(latents_jsonl)
    write_jsonl(out, rows + [{**row, "text": row["text"] + PROMPT_SUFFIX} for row in rows])
    return out


class Runner:
    """Runs ``python -m pyramid_core ...`` commands, printing each, and keeps their summaries."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def __call__(self, *args: str) -> dict:
        command = [sys.executable, "-m", "pyramid_core", *map(str, args)]
        printable = " ".join(["python", "-m", "pyramid_core", *map(str, args)])
        print(f"\n$ {printable}", flush=True)
        self.commands.append(printable)
        done = subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)
        print(done.stdout, end="", flush=True)
        last = done.stdout.strip().splitlines()[-1]
        return json.loads(last) if last.startswith("{") else {"output": last}     # fit-preview: a path


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def normalize_latent_channels(vae_folder: Path, anno: Path, clips: int = 96) -> dict:
    """Give a trained VAE's latent channels, in place, the statistics the variant's normalisation
    expects, and make its posterior a point mass at the mean; returns the measured statistics.

    The DiT sees ``(latent - shift) * scale`` with the released VAE's constants
    (:mod:`pyramid_core.variants`), which give that VAE's later-frame latents about zero mean and
    unit variance. A small VAE trained from scratch has latents of another spread, and an uneven
    one: the committed toy VAE's channels ranged from std 0.12 to 1.8, a factor 15 (its
    training.json). Under the schedule's unit noise a channel of std 0.1 is gone at every
    timestep and a channel of std 3 is barely touched, so the DiT would learn the faint
    channels from almost nothing (measured with an image-only DiT, 48 prompts: colour 29/48
    with this map, 30/48 with one global factor -- neutral there).
    An affine map of each channel of the encoder's means, undone by the decoder's first conv
    (both 1x1x1 convs, so the map is exact: the same reconstructions), gives every channel
    of the later-frame latents, as the DiT sees them, mean 0 and std 1 (per-channel latent
    statistics, as later video VAEs ship them; here folded into the weights so the released
    normalisation stays). The first frame shares the convs and gets the same map.

    The posterior's log-variance becomes the constant -30 (the clamp's floor: std 3e-7). This
    VAE's posterior std is about as large as the spread of its means (the released VAE's is
    tiny), and its decoder decodes the means (it learned to ignore that noise). The DiT learns
    from the means (``extract-latents --mean``), so every encoder of a user's image or clip --
    the samplers draw from the posterior, as the reference does -- must give the means too.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from pyramid_core.models.vae import CausalVideoVAE
    from pyramid_core.variants import VIDEO_LATENT_SCALE, VIDEO_LATENT_SHIFT
    from pyramid_core.video_io import frames_to_pixels, read_video

    vae = CausalVideoVAE.from_pretrained(str(vae_folder)).float().eval()
    rows = read_jsonl(anno)
    picks = np.random.default_rng(0).choice(len(rows), size=min(clips, len(rows)), replace=False)
    later = []
    with torch.no_grad():
        for i in sorted(picks):
            frames, _ = read_video(anno.parent / rows[i]["video"])
            means = vae.encode(frames_to_pixels(frames[None])).mode()[:, :, 1:]      # (1, C, T'-1, h, w)
            later.append(means.transpose(0, 1).flatten(1).double())
    # float64 statistics: a handful of numbers that rescale a whole model
    later = torch.cat(later, 1)                                                    # (C, samples)
    mean, std = later.mean(1), later.std(1)
    # A channel the VAE never uses (std ~ 0) would get a huge gain that overflows the fp16
    # export; it carries nothing, so it keeps a gain of the other channels' size.
    std = std.clamp_min(1e-3 * float(std.max()))
    # the DiT sees (z' - shift) * scale = (z - mean) / std  =>  z' = gain * z + offset
    gain = 1.0 / (std * VIDEO_LATENT_SCALE)
    offset = VIDEO_LATENT_SHIFT - mean * gain
    file = vae_folder / "diffusion_pytorch_model.safetensors"
    state, channels = load_file(str(file)), vae.config.encoder_out_channels
    weight, bias = state["quant_conv.conv.weight"].double(), state["quant_conv.conv.bias"].double()
    weight[:channels] *= gain.view(-1, 1, 1, 1, 1)
    bias[:channels] = bias[:channels] * gain + offset
    weight[channels:] = 0.0                                   # log-variance: the constant -30
    bias[channels:] = -30.0
    # the decoder's first conv reads z = (z' - offset) / gain
    post_weight, post_bias = state["post_quant_conv.conv.weight"].double(), state["post_quant_conv.conv.bias"].double()
    post_bias = post_bias - post_weight.flatten(2).sum(2) @ (offset / gain)
    post_weight = post_weight / gain.view(1, -1, 1, 1, 1)
    state.update({"quant_conv.conv.weight": weight.float(), "quant_conv.conv.bias": bias.float(),
                  "post_quant_conv.conv.weight": post_weight.float(), "post_quant_conv.conv.bias": post_bias.float()})
    save_file(state, str(file), metadata={"format": "pt"})
    return {"later_frame_mean": [round(float(v), 4) for v in mean],
            "later_frame_std": [round(float(v), 4) for v in std]}


def fit_toy_preview(run: Runner, model: Path, folder: Path, seed: int, clips: int = 48) -> Path:
    """The toy VAE's own latent preview colours: ``fit-preview`` of ``model``'s VAE on ``clips``
    fresh toy clips (every colour, shape and background; rendered into ``folder``), written as
    ``model/`` :data:`PREVIEW_FILE`. The released VAE's built-in colours mean nothing for this
    small VAE's latents (a gray scene previewed cyan); the page's stand-in graphs pick these."""
    rng = np.random.default_rng(seed + 2)
    combos = world.combinations()
    for i in range(clips):
        color, shape, direction = combos[i % len(combos)]
        background = list(world.BACKGROUNDS)[i % len(world.BACKGROUNDS)]
        scene = world.random_scene(rng, color, shape, direction, background)
        write_video(folder / f"{i:03d}.mp4", world.render(scene), world.FPS)

    def shown(path: Path) -> str:        # paths kept in preview.json and training.json: relative where they can be
        return os.path.relpath(path, ROOT) if path.resolve().is_relative_to(ROOT) else str(path)

    run("fit-preview", "--vae", shown(model / "causal_video_vae"), "--inputs", folder, "--out", shown(model / PREVIEW_FILE),
        "--size", str(max(world.WIDTH, world.HEIGHT)), "--frames", str(world.FRAMES), "--dtype", "fp32",
        "--device", "cpu")
    return model / PREVIEW_FILE


def run_phase(run: Runner, command: str, output_dir: Path, *settings: str) -> dict:
    """One training run (``command``: ``train-vae`` or ``train-dit``) into ``output_dir``; its
    summary (losses, export folder, the command, wall and CPU seconds) is also written to
    ``output_dir/summary.json``, for ``--vae-from`` and ``--dit-images-from``."""
    started, cpu_start = time.monotonic(), cpu_seconds()
    summary = run(command, *settings, f"output_dir={output_dir}")
    summary.update(command=run.commands[-1], wall_s=round(time.monotonic() - started, 1),
                   cpu_s=round(cpu_seconds() - cpu_start, 1))
    (output_dir / PHASE_SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def reuse_phase(run: Runner, earlier_work: Path, work: Path, name: str, flag: str) -> dict:
    """Copy the training phase ``name`` (``vae_images``, ``vae`` or ``dit_images``) of an earlier
    run's work folder into ``work`` instead of training it again (``flag``: ``--vae-from`` or
    ``--dit-images-from``): the same settings and seed train the same weights, so only the later
    phases run (to try their settings). Returns its summary with ``export`` pointing at the copy;
    its command joins this run's commands (the earlier folder written as ``<flag>``) and its
    seconds this run's record."""
    source = earlier_work / name
    if not (source / PHASE_SUMMARY).is_file():
        raise SystemExit(f"{flag} {earlier_work}: no {name}/{PHASE_SUMMARY} there; give the --work folder "
                         "of an earlier run of this script that trained that phase"
                         + (" (or, for --vae-from, a model folder it wrote)" if flag == "--vae-from" else ""))
    shutil.copytree(source, work / name)
    summary = json.loads((source / PHASE_SUMMARY).read_text())
    summary["export"] = str(work / name / Path(summary["export"]).name)
    print(f"\nreusing {source} (trained in {summary['wall_s'] / 60:.1f} min): {summary['command']}", flush=True)
    placeholder = f"<{flag.lstrip('-')}>"
    run.commands.append(summary["command"].replace(str(earlier_work.resolve()), placeholder)
                        .replace(str(earlier_work), placeholder))
    return summary


def reuse_model_vae(run: Runner, model: Path, work: Path) -> tuple[dict, dict, dict, dict]:
    """Take the VAE a model folder ships (``--vae-from MODEL``: an earlier output of this script,
    such as the committed toy model) instead of training one: its ``causal_video_vae`` is copied
    into ``work/vae`` as it is, already normalised (:func:`normalize_latent_channels` ran when it
    was made), so the DiT learns the very latents that VAE gives users. The work folders of
    earlier runs are scratch space that does not last; the model folder does.

    Returns the two VAE phases' records (losses, and ``export`` pointing at the copy), the latent
    statistics and the seconds the VAE took, all as that model's ``training.json`` states them;
    its train-vae commands join this run's (its ``<work>`` written as ``<vae-from>``).
    """
    if not (model / "training.json").is_file():
        raise SystemExit(f"--vae-from {model}: a model folder needs the training.json this script wrote "
                         "with it (the VAE's losses, commands and seconds)")
    record = json.loads((model / "training.json").read_text())
    export = work / "vae" / "causal_video_vae"
    shutil.copytree(model / "causal_video_vae", export)
    seconds = {key: record["seconds"]["train-vae"][key] for key in ("wall_s", "cpu_s")}
    print(f"\nreusing the VAE of {model} (trained in {seconds['wall_s'] / 60:.1f} min)", flush=True)
    run.commands += [c.replace("<work>", "<vae-from>") for c in record["commands"] if " train-vae " in c]
    return ({**record["vae_images"]}, {**record["vae"], "export": str(export)}, record["latent_channels"], seconds)


def reused_seconds(*summaries: dict) -> dict:
    """The wall and CPU seconds the reused phases took in their own runs (None where a run did
    not measure them; zeros for no phase)."""
    return {key: None if any(s.get(key) is None for s in summaries) else sum(s[key] for s in summaries)
            for key in ("wall_s", "cpu_s")}


def count_reused(timings: dict, step: str, *summaries: dict) -> None:
    """Add the seconds of reused phases to ``timings[step]`` and mark it reused, so that the
    record states what the whole recipe costs."""
    seconds = reused_seconds(*summaries)
    timings[step] = {key: None if seconds[key] is None else round(value + seconds[key], 1)
                     for key, value in timings[step].items()}
    timings[step]["reused"] = True          # the path is the reader's own, as <work> is


def same_weights(file: Path, other: Path) -> bool:
    """Whether two safetensors files hold the same tensors up to float32 rounding (a VAE that
    ``--vae-from`` reuses is normalised again, :func:`normalize_latent_channels` being exact only
    up to rounding)."""
    import torch
    from safetensors.torch import load_file

    ours, theirs = load_file(str(file)), load_file(str(other))
    return ours.keys() == theirs.keys() and all(
        torch.allclose(ours[key].double(), theirs[key].double(), rtol=1e-4, atol=1e-6) for key in ours)


def export_fp16(trained: Path, target: Path) -> None:
    """An exported fp32 official folder -> the same folder in fp16."""
    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(trained / "diffusion_pytorch_model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()},
              str(target / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(trained / "config.json", target / "config.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "toy_model" / "pyramid-flow-toy",
                        help="the model folder (default: where the toy model is to be committed)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "toy" / "work", help="data, features and runs")
    parser.add_argument("--clips", type=int, default=12, help="clips per combination and background")
    parser.add_argument("--vae-clips", type=int, default=600, help="clips of several shapes for the VAE")
    parser.add_argument("--vae-image-steps", type=int, default=3000, help="steps on still frames")
    parser.add_argument("--vae-clip-steps", type=int, default=1200, help="then steps on whole clips")
    parser.add_argument("--vae-from", type=Path, metavar="WORK|MODEL",
                        help="reuse a trained VAE and run the later phases again: the --work folder of an earlier "
                             "run, or a model folder this script wrote (e.g. toy_model/pyramid-flow-toy)")
    # More steps at a smaller batch: on 2 cores a step costs about in proportion to its clips
    # (a first-frame step of 32 about 0.2 s; a clip step of 64, 32, 16 about 0.6, 0.29, 0.18 s),
    # and this small DiT gains more from updates than from larger batches. In about the same
    # wall time the clip phase at 32 clips a step gave text-to-video with the shape 18 of 32
    # against 13 at 64; at 16 clips for 10000 steps 21 against 18, image-to-video 18 against 13
    # (MODEL_CARD.md). Smaller still stops paying: 15000 steps of 8 clips and 20000 of 4 (0.10
    # and 0.06 s a step) passed image-to-video 15 and 10 times in 32. 12000 steps of 16 against
    # 10000: the prompted shape in 51 videos of 64 against 41 (seeds 4-11), image-to-video alike
    # (40 and 39 of 64 other scenes).
    parser.add_argument("--dit-image-steps", type=int, default=6000, help="DiT steps on first frames")
    parser.add_argument("--dit-image-batch", type=int, default=32, help="first frames per DiT step (a multiple of 4)")
    parser.add_argument("--dit-steps", type=int, default=12000, help="then DiT steps on whole clips")
    parser.add_argument("--dit-batch", type=int, default=16, help="clips per DiT step (a multiple of 4)")
    parser.add_argument("--dit-clip-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a train-dit setting of the clip phase only, after the recipe's (repeatable; "
                             "e.g. sample_ratios=[1,1,2] or corrupt_ratio=0.1), to try it on one first-frame DiT")
    parser.add_argument("--dit-images-from", type=Path, metavar="WORK",
                        help="reuse the first-frame DiT an earlier run with the same VAE trained (its --work "
                             "folder; with --vae-from) and train the clip phase only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--combinations", type=int, help="train on the first N combinations only (smoke runs)")
    parser.add_argument("--preview-clips", type=int, default=48, help="toy clips the preview colours are fitted on")
    parser.add_argument("--preview-only", action="store_true",
                        help="only fit the preview colours of the model already in --out (step 7)")
    args = parser.parse_args(argv)
    if args.dit_images_from and not args.vae_from:
        parser.error("--dit-images-from needs --vae-from: a first-frame DiT learned the latents of its own VAE")
    if args.preview_only:
        fit_toy_preview(Runner(), args.out, args.work / "preview", args.seed, args.preview_clips)
        return 0
    started, cpu_start = time.monotonic(), cpu_seconds()
    work, run = args.work, Runner()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    timings = {}

    def lap(name: str, since: tuple[float, float]) -> tuple[float, float]:
        now = (time.monotonic(), cpu_seconds())
        timings[name] = {"wall_s": round(now[0] - since[0], 1), "cpu_s": round(now[1] - since[1], 1)}
        return now

    mark = (started, cpu_start)
    anno = render_dataset(work / "data", args.clips, args.seed, args.combinations)
    vae_anno = render_vae_dataset(work / "data", args.vae_clips, args.seed)
    text_encoders = tiny_checkpoints.write_text_encoder_folder(
        work / "text", words=tiny_checkpoints.WORDS + world.vocabulary())
    (work / "vae_config.json").write_text(json.dumps(VAE_CONFIG, indent=1))
    (work / "dit_config.json").write_text(json.dumps(DIT_CONFIG, indent=1))
    write_jsonl(work / "null.jsonl", [{"text": ""}])
    mark = lap("data", mark)

    # Two phases: still frames, then whole clips from those weights. A causal VAE trained on
    # clips from scratch fits the background for hundreds of steps before the latents carry a
    # shape; on stills (8 per step at the cost of about one clip) it learns colours and outlines
    # first, and the clips then only have to teach it time.
    vae_common = [f"anno_files={json.dumps([str(vae_anno)])}", f"data_root={vae_anno.parent}",
                  f"width={world.VAE_CROP}", f"height={world.VAE_CROP}", "warmup_steps=100", "lr_schedule=cosine", "weight_decay=0",
                  "betas=[0.9,0.99]", "pixel_loss=mse", "perceptual_weight=0", "disc_weight=0", "kl_weight=1e-5",
                  "ema_decay=0.99", f"vae_config={work / 'vae_config.json'}", "log_every=50", "keep_last=1",
                  "tensorboard=false", "device=cpu", f"seed={args.seed}"]
    # A reused VAE (--vae-from) counts with the seconds it took in its own run, so that the record
    # states what the whole recipe costs (None where that run did not measure them).
    reused = []
    if args.vae_from is not None and (args.vae_from / "causal_video_vae").is_dir():
        first, vae, latent_stats, seconds = reuse_model_vae(run, args.vae_from, work)    # already normalised
        reused.append(seconds)
    else:
        if args.vae_from:
            first, vae = (reuse_phase(run, args.vae_from, work, name, "--vae-from") for name in ("vae_images", "vae"))
            reused += [first, vae]
        else:
            first = run_phase(run, "train-vae", work / "vae_images", *vae_common, "num_frames=1", "batch_size=8",
                              f"max_steps={args.vae_image_steps}", "lr=2e-3", f"save_every={args.vae_image_steps}")
            vae = run_phase(run, "train-vae", work / "vae", *vae_common, f"num_frames={world.FRAMES}", "batch_size=2",
                            f"max_steps={args.vae_clip_steps}", "lr=1e-3", f"init_weights={first['export']}",
                            f"save_every={args.vae_clip_steps}")
        latent_stats = normalize_latent_channels(Path(vae["export"]), anno)
    print(f"latent channels: {latent_stats}", flush=True)
    mark = lap("train-vae", mark)
    if reused:
        count_reused(timings, "train-vae", *reused)

    # Posterior means, not samples: this small VAE's posterior std is about as large as the
    # spread of its means (the released VAE's is tiny), so sampled latents would teach the DiT
    # to make that noise, which the decoder turns into stray blobs.
    feats = work / "features"
    run("extract-latents", "--anno", anno, "--data-root", anno.parent, "--vae", vae["export"],
        "--out-dir", feats / "latents", "--out-jsonl", feats / "latents.jsonl", "--sizes", f"{world.WIDTH}x{world.HEIGHT}",
        "--frames", str(world.FRAMES), "--mean", "--dtype", "fp32", "--device", "cpu", "--seed", str(args.seed))
    captions = with_suffixed_captions(feats / "latents.jsonl", feats / "captions.jsonl")
    run("extract-text", "--anno", captions, "--text-encoders", text_encoders, "--out-dir", feats / "text",
        "--out-jsonl", feats / "train.jsonl", "--dtype", "fp32", "--device", "cpu", "--batch-size", "64")
    run("extract-text", "--anno", work / "null.jsonl", "--text-encoders", text_encoders, "--out-dir",
        feats / "null", "--out-jsonl", feats / "null_out.jsonl", "--dtype", "fp32", "--device", "cpu")
    null_text = read_jsonl(feats / "null_out.jsonl")[0]["text_fea"]
    mark = lap("features", mark)

    # Two phases, as the VAE's: first frames, then whole clips from those weights. The first
    # frame is where the shape is drawn (later units follow their history), but in the temporal
    # pyramid a column trains it only when it has a single unit, a third of the steps; on first
    # frames alone every column does, at 60-70% of a video step's cost. Image-only DiTs on the
    # same features (48 prompts, first frames, 64 clips a step): the prompted shape 14, 22, 26
    # times after 1000, 2000, 3000 steps (chance 16; read by the bounding-box fill the judge
    # used then), the colour 47/48 from 2000 on.
    dit_common = [f"anno_files={json.dumps([str(feats / 'train.jsonl')])}", f"variant={VARIANT}",
                  f"width={world.WIDTH}", f"height={world.HEIGHT}", "lr=1e-3",
                  "warmup_steps=200", "lr_schedule=cosine", "weight_decay=0", "ema_decay=0.998",
                  f"null_text_fea={null_text}", "log_every=100", "keep_last=1", "tensorboard=false", "device=cpu",
                  f"seed={args.seed}"]
    if args.dit_images_from:
        theirs = args.dit_images_from / "vae" / Path(vae["export"]).name / "diffusion_pytorch_model.safetensors"
        if not theirs.is_file() or not same_weights(theirs, Path(vae["export"]) / theirs.name):
            raise SystemExit(f"--dit-images-from {args.dit_images_from}: its first-frame DiT learned another VAE's "
                             f"latents ({theirs} differs from this run's); give the --vae-from folder it was trained with")
        dit_images = reuse_phase(run, args.dit_images_from, work, "dit_images", "--dit-images-from")
    else:
        dit_images = run_phase(run, "train-dit", work / "dit_images", *dit_common,
                               f"dit_config={work / 'dit_config.json'}", f"batch_size={args.dit_image_batch}",
                               "num_frames=1", "max_latent_frames=1",
                               f"max_steps={args.dit_image_steps}", f"save_every={args.dit_image_steps}")
    dit = run_phase(run, "train-dit", work / "dit", *dit_common, f"init_weights={dit_images['export']}",
                    f"batch_size={args.dit_batch}", f"num_frames={world.FRAMES}", "max_latent_frames=3",
                    "temporal_pyramid=true",
                    f"max_steps={args.dit_steps}", f"save_every={args.dit_steps}", *args.dit_clip_setting)
    mark = lap("train-dit", mark)
    if args.dit_images_from:
        reused.append(dit_images)
        count_reused(timings, "train-dit", dit_images)

    out = args.out          # anything else in it (a model card) stays; the model files are replaced
    for name in ("causal_video_vae", DIT_FOLDER, *TEXT_FOLDERS):
        shutil.rmtree(out / name, ignore_errors=True)
    export_fp16(Path(vae["export"]), out / "causal_video_vae")
    export_fp16(Path(dit["export"]), out / DIT_FOLDER)
    for name in TEXT_FOLDERS:
        shutil.copytree(text_encoders / name, out / name)
    fit_toy_preview(run, out, work / "preview", args.seed, args.preview_clips)
    lap("export", mark)
    earlier = reused_seconds(*reused)
    summary = {
        "data": {"clips": len(read_jsonl(anno)), "vae_clips": args.vae_clips,
                 "combinations": len(world.combinations(held_out=False)),
                 "held_out": sorted(" ".join(c) for c in world.HELD_OUT), "size": [world.WIDTH, world.HEIGHT],
                 "frames": world.FRAMES, "fps": world.FPS},
        "vae_images": {k: first[k] for k in ("step", "first_loss", "last_loss", "best_loss")},
        "vae": {k: vae[k] for k in ("step", "first_loss", "last_loss", "best_loss")},
        "latent_channels": latent_stats,
        "dit_images": {k: dit_images[k] for k in ("step", "first_loss", "last_loss", "best_loss")},
        "dit": {k: dit[k] for k in ("step", "first_loss", "last_loss", "best_loss")},
        "seconds": timings,
        "total": {key: None if earlier[key] is None else round(now - since + earlier[key], 1)
                  for key, now, since in (("wall_s", time.monotonic(), started), ("cpu_s", cpu_seconds(), cpu_start))},
        # the work and model folders are the reader's own choice (--work, --out): written as
        # <work>, and <out> where the model folder is outside the repository
        "commands": [c.replace(str(work.resolve()), "<work>").replace(str(work), "<work>")
                     .replace(str(out.resolve()), "<out>").replace(str(out), "<out>") for c in run.commands],
    }
    (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("vae", "dit", "total")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
