"""Command line: ``python -m pyramid_core generate {t2v,i2v,continue} ...``, ``generate-batch``
and ``fit-preview`` (``download`` and ``pack-folder``: :mod:`pyramid_core.hub.cli`).

Models come from an official checkpoint folder (``--model-dir`` holding
``diffusion_transformer_384p/``, ``_768p/`` or ``_image/``, ``causal_video_vae/`` and the
text encoder folders) or from single files (``--dit``, ``--vae``) plus a text encoder folder
(``--text-encoders``). The result is written as an mp4 (H.264 through PyAV), or as an image
for a one-frame result. Steps and guidance default to the reference's for the variant.

Examples::

    python -m pyramid_core generate t2v --model-dir pyramid-flow-miniflux \\
        --prompt "a red fox running through snow" --seconds 5 --output fox.mp4
    python -m pyramid_core generate i2v --model-dir pyramid-flow-miniflux --image first.png \\
        --prompt "waves rolling in" --frames 121 --output waves.mp4
    python -m pyramid_core generate continue --model-dir pyramid-flow-miniflux --video waves.mp4 \\
        --prompt "waves rolling in" --frames 241 --history-frames 16 --output longer.mp4
    python -m pyramid_core generate t2v --model-dir pyramid-flow-miniflux --variant miniflux-image \\
        --prompt "a red fox in the snow" --width 1280 --height 768 --frames 1 --output fox.png
    python -m pyramid_core fit-preview --vae my_finetuned_vae/ --inputs my_clips/ --out my_preview.json

At scale, under ``torchrun`` (one node or many): ``generate --parallel cfg|sequence|cfg+sequence``
makes one video on several processes; ``generate-batch --prompts jobs.jsonl --out-dir DIR``
gives each process (or each parallel group) its share of many videos, resumably::

    torchrun --nproc_per_node 2 -m pyramid_core generate t2v --model-dir ... --prompt "..." --parallel cfg
    torchrun --nproc_per_node 8 -m pyramid_core generate-batch --prompts jobs.jsonl --out-dir out/ --model-dir ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from .compile import COMPILE_MODES, check_compile_available
from .distributed import DistInfo, cleanup, init_distributed, launch_world_size, report_launch_error
from .generation import sampling_options, trim_to_vae_length
from .models.vae.budget import parse_tile_size
from .parallel import PARALLEL_MODES, ParallelGroups, make_groups, plan_parallel
from .sampling import encode_text
from .sampling.settings import SamplingSettings
from .sizes import check_sampler_fits, check_video_size, frames_for_seconds, free_host_memory, latent_frames, latent_shape
from .variants import DEFAULT_NEGATIVE_PROMPT, PROMPT_SUFFIX, VARIANTS, choose_variant, get_variant
from .video_io import frames_to_pixels, read_video

# Official folder layout: the DiT subfolders a release may hold, in the order they are
# picked when --variant does not say (the 384p model first: the fastest), and the VAE.
DIT_FOLDERS = ("diffusion_transformer_384p", "diffusion_transformer_768p", "diffusion_transformer_image")
VAE_FOLDER = "causal_video_vae"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def _per_stage(text: str) -> list[int] | int:
    values = [v for v in text.split(",") if v.strip()]
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or a comma list such as 20,20,20, got {text!r}") from None
    return numbers[0] if len(numbers) == 1 else numbers


def _tile_size(text: str) -> int | str | None:
    try:
        return parse_tile_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _per_stage_float(text: str) -> list[float] | float:
    try:
        numbers = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a comma list such as 7,7,7, got {text!r}") from None
    return numbers[0] if len(numbers) == 1 else numbers


def _resolve_paths(args) -> tuple[Path, Path, Path]:
    """(DiT, VAE, text encoder folder) from the arguments."""
    model_dir = Path(args.model_dir) if args.model_dir else None
    if model_dir is not None and not model_dir.is_dir():
        raise FileNotFoundError(f"--model-dir {model_dir}: no such folder (the official checkpoint folder, "
                                "e.g. pyramid-flow-miniflux as downloaded)")
    dit = Path(args.dit) if args.dit else None
    if dit is None:
        if model_dir is None:
            raise ValueError("give --model-dir (official folder) or --dit (single file)")
        wanted = (get_variant(args.variant).folder,) if args.variant else DIT_FOLDERS
        found = [model_dir / folder for folder in wanted if (model_dir / folder).is_dir()]
        if not found:
            names = ", ".join(f"{folder}/" for folder in wanted)
            raise ValueError(f"--model-dir {model_dir} holds none of {names}: is it the official checkpoint folder?")
        dit = found[0]
    vae = Path(args.vae) if args.vae else (model_dir / VAE_FOLDER if model_dir else None)
    text = Path(args.text_encoders) if args.text_encoders else model_dir
    if vae is None or text is None:
        raise ValueError("single files need --vae and --text-encoders (a folder with tokenizer*/ and text_encoder*/)")
    return dit, vae, text


def _expected_variant(args, dit_path: Path):
    """The variant a DiT path will load as, before loading it (for the size checks): --variant,
    else what its name says, taking the larger size where the families' defaults differ."""
    if args.variant:
        return get_variant(args.variant)
    guesses = [choose_variant(family, str(dit_path))[0] for family in ("flux", "mmdit")]
    return max(guesses, key=lambda v: v.width * v.height)


def _num_frames(args) -> int:
    if args.frames is not None:
        return args.frames
    return frames_for_seconds(args.seconds)


def _progress_bar():
    from tqdm.auto import tqdm

    state = {}

    def report(info):
        if "bar" not in state:
            state["bar"] = tqdm(total=info.total_steps, unit="step", desc="sampling")
        bar = state["bar"]
        bar.set_postfix(unit=f"{info.unit_index + 1}/{info.num_units}", stage=info.stage_index)
        bar.update(info.step - bar.n)
        if info.step == info.total_steps:
            bar.close()

    return report


# --------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------

def _check_device(device: str) -> None:
    """A clear sentence for a device this torch cannot use (instead of a traceback at load)."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device}: not a torch device (use cpu, cuda, cuda:1, mps, ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        raise ValueError(f"--device {device}: no CUDA GPU is usable here ({build}); use --device cpu, or install "
                         "a CUDA build of torch")
    if kind == "cuda" and (torch.device(device).index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: Apple's MPS is not available here; use --device cpu")


def _check_sampling(args, variant) -> None:
    sampling = sampling_options(args, variant)
    SamplingSettings.create(variant.num_stages, sampling["steps"], sampling["video_steps"],
                            sampling["guidance_scale"], sampling["video_guidance_scale"])


def _check_run_args(args) -> None:
    """What holds for the whole run and needs no file: device, dtypes, compile."""
    from .loading import check_dtype_supported

    _check_device(args.device)
    if launch_world_size() > 1 and torch.device(args.device).type not in ("cpu", "cuda"):
        raise ValueError(f"--device {args.device}: under torchrun each process takes cuda:LOCAL_RANK (--device "
                         "cuda) or the CPU")
    for dtype in {args.dtype, args.vae_dtype or args.dtype}:
        check_dtype_supported(dtype, args.device)
    if args.compile != "off":
        check_compile_available(args.device)
    if args.block_swap < 0:
        raise ValueError(f"--block-swap {args.block_swap}: the number of DiT blocks to keep in host memory, 0 or more")
    if args.block_swap and args.compile != "off":
        raise ValueError("--block-swap and --compile do not go together yet: choose one")


def _check_request_options(args) -> int:
    """One video's own options (length, size, steps, guidance, input files); returns its pixel
    frame count."""
    num_frames = _num_frames(args)
    latent_frames(num_frames)
    if (args.width is None) != (args.height is None):
        raise ValueError("give both --width and --height, or neither")
    if args.width is not None:
        check_video_size(args.width, args.height)
    _check_sampling(args, get_variant("miniflux-384p"))     # what was given; the defaults are valid for all
    for name in ("image", "video"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"--{name} {path}: no such file")
    return num_frames


def _check_request_fits(args, num_frames: int, dit_path: Path) -> None:
    """One video against the model it will run on: image-only variants, host memory."""
    variant = _expected_variant(args, dit_path)
    if variant.image_only and num_frames > 1:
        raise ValueError(f"{variant.name} makes single images: ask for --frames 1 (or --seconds 0), or use a "
                         "384p or 768p video model")
    width, height = (args.width, args.height) if args.width is not None else (variant.width, variant.height)
    free = free_host_memory()
    if free is not None:   # the noise of the whole video is drawn in host memory
        check_sampler_fits(latent_shape(width, height, num_frames), free, "host memory")


def _check_args(args) -> tuple[int, tuple[Path, Path, Path]]:
    """Everything that can be checked before a model loads; returns the pixel frame count and
    the model paths."""
    _check_run_args(args)
    num_frames = _check_request_options(args)
    paths = _resolve_paths(args)
    _check_request_fits(args, num_frames, paths[0])
    return num_frames, paths


def _join_launch(args, plan) -> tuple[DistInfo, ParallelGroups]:
    """Join torchrun's process group (when there is one) and make ``plan``'s groups;
    ``args.device`` becomes this rank's device."""
    if launch_world_size() == 1:
        info = DistInfo(device=torch.device(args.device))
        return info, ParallelGroups(plan, info)
    info = init_distributed(args.device)
    args.device = str(info.device)
    return info, make_groups(plan, info)


def generate(args) -> Optional[Path]:
    """One video; under torchrun with ``--parallel`` on every rank, written by rank 0 (the others
    return None)."""
    from .generation import decode_frames, load_models, sample_latents, write_frames

    plan = plan_parallel(args.parallel, launch_world_size(), args.sequence_size, one_video=True)
    num_frames, paths = _check_args(args)
    info, groups = _join_launch(args, plan)
    try:
        models = load_models(args, paths, groups)
        text = encode_text(models.text_encoder, args.prompt, args.negative_prompt, args.prompt_suffix)
        latents = sample_latents(args, models, num_frames, text, groups,
                                 callback=_progress_bar() if groups.leader else None)
        if not groups.leader:
            return None
        return write_frames(args.output, decode_frames(args, models, latents), args.fps)
    finally:
        cleanup()


# --------------------------------------------------------------------------------------
# generate-batch
# --------------------------------------------------------------------------------------

def generate_batch(args) -> dict:
    """Every job of ``--prompts`` not done yet in ``--out-dir``, shared over the launch's ranks.

    Returns the counts (``ok``, ``failed``, ``already_done``: over the launch on rank 0, the
    rank's own elsewhere; ``texts_encoded``: this rank's); rank 0 prints them as one JSON line."""
    from .batch import read_jobs, run_batch, save_latents
    from .generation import TextCache, decode_frames, load_models, sample_latents, write_frames

    plan = plan_parallel(args.parallel, launch_world_size(), args.sequence_size, one_video=False,
                         command="generate-batch")
    _check_run_args(args)
    paths = _resolve_paths(args)
    out_dir = Path(args.out_dir)

    def check(request) -> int:
        num_frames = _check_request_options(request)
        _check_request_fits(request, num_frames, paths[0])
        return num_frames

    defaults = argparse.Namespace(**vars(args), image=None, video=None, mode="t2v")
    jobs = read_jobs(args.prompts, defaults, out_dir, save_latents=args.save_latents, check=check)
    info, groups = _join_launch(args, plan)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        models = load_models(args, paths, groups)
        texts = TextCache(models.text_encoder)

        def generate_one(job):
            request = job.request
            text = texts.conditioning(request.prompt, request.negative_prompt, request.prompt_suffix)
            latents = sample_latents(request, models, job.num_frames, text, groups)
            if groups.leader:
                if job.latents is not None:
                    save_latents(job.latents, latents, job, models.variant.name)
                write_frames(job.output, decode_frames(request, models, latents), request.fps)

        counts = run_batch(jobs, out_dir, groups, generate_one)
        counts["texts_encoded"] = texts.encoded            # by this rank: each distinct text once
        if info.is_main:
            print(json.dumps({**counts, "results": str(out_dir / "results.jsonl")}))
        return counts
    finally:
        cleanup()


# --------------------------------------------------------------------------------------
# fit-preview
# --------------------------------------------------------------------------------------

MEDIA_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")


def _media_files(inputs: Sequence[str]) -> list[Path]:
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not files:
        raise ValueError(f"no images or videos in {', '.join(inputs)} (looked for {', '.join(MEDIA_SUFFIXES)})")
    return files


def _clip_for_fit(path: Path, size: int, max_frames: int) -> torch.Tensor:
    """A file's first ``1 + 8k <= max_frames`` frames, its longer side scaled to ``size`` px
    (both sides multiples of 8), as ``(3, F, H, W)`` pixels in [-1, 1]."""
    frames, _ = read_video(path)                                                     # (F, H, W, 3) uint8
    frames = trim_to_vae_length(frames[:max_frames])
    height, width = frames.shape[1:3]
    scale = size / max(height, width)
    target = [max(8, round(side * scale / 8) * 8) for side in (height, width)]
    pixels = frames_to_pixels(frames)[0]                                             # (3, F, H, W)
    resized = torch.nn.functional.interpolate(pixels.transpose(0, 1), size=target, mode="bilinear",
                                              antialias=True, align_corners=False)
    return resized.transpose(0, 1).clamp(-1, 1)


def fit_preview(args) -> Path:
    from .loading import load_vae
    from .preview import fit_preview_factors

    _check_device(args.device)
    files = _media_files(args.inputs)
    latent_frames(args.frames)
    vae = load_vae(args.vae, dtype=args.dtype, device=args.device)
    clips = (_clip_for_fit(path, args.size, args.frames) for path in files)
    factors = fit_preview_factors(vae, clips, source=f"fitted to {args.vae} on {len(files)} files")
    return factors.save(args.out)


# Training tools live in pyramid_core.training.cli (imported only when asked for, so
# generating never loads the training stack); each parses its own arguments.
TRAINING_TOOLS = {
    "train-vae": ("train_vae_main", "train the causal video VAE (--config FILE [key=value ...])"),
    "train-dit": ("train_dit_main", "train or LoRA-fine-tune a pyramid DiT (--config FILE [key=value ...])"),
    "extract-latents": ("extract_latents_main", "write VAE latents of a video JSONL, resumable"),
    "extract-text": ("extract_text_main", "write text features of a JSONL, resumable"),
}
# Getting the weights (pyramid_core.hub.cli), each with its own arguments.
HUB_TOOLS = {
    "download": "fetch a variant's files from the Hugging Face Hub into ComfyUI or a folder (resumable, verified)",
    "pack-folder": "turn official release folders into the single .safetensors files the loaders take",
}


def _add_generation_options(parser: argparse.ArgumentParser, batch: bool) -> None:
    """The options of ``generate``; for ``generate-batch`` they are every job's defaults."""
    if batch:
        parser.add_argument("--prompt", help="default prompt of jobs that give none")
    parser.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT)
    parser.add_argument("--prompt-suffix", default=PROMPT_SUFFIX, help="appended to the prompt (default: %(default)r)")
    models = parser.add_argument_group("models")
    models.add_argument("--model-dir", help="official folder (diffusion_transformer_*/, causal_video_vae/, text encoders)")
    models.add_argument("--dit", help="DiT folder or single .safetensors file")
    models.add_argument("--vae", help="VAE folder or single .safetensors file")
    models.add_argument("--text-encoders", help="folder with tokenizer*/ and text_encoder*/")
    models.add_argument("--text-encoder-device", choices=("same", "cpu"), default="same",
                        help="cpu: keep CLIP and T5 in host memory and compute them there in fp32 (each prompt "
                             "is encoded once), leaving the GPU to the DiT and the VAE")
    models.add_argument("--text-encoder-weights", choices=("fp8_e4m3fn",),
                        help="store the text encoders' linear weights (T5: 4.7 B parameters) in fp8, "
                             "computed in their dtype")
    models.add_argument("--variant", choices=sorted(VARIANTS), help="default: detected from the DiT")
    models.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    models.add_argument("--vae-dtype", choices=("bf16", "fp16", "fp32"), help="default: --dtype")
    models.add_argument("--block-swap", type=int, default=0, metavar="N",
                        help="keep the DiT's last N blocks in host memory and stream each to the GPU just before "
                             "it runs (for small cards; same video, slower the more are swapped)")
    models.add_argument("--weight-dtype", choices=("fp8_e4m3fn",),
                        help="store the DiT's linear weights in fp8 (half the memory; fp8 matmuls on GPUs "
                             "from Ada/Hopper on, computed in --dtype elsewhere)")
    models.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="under torchrun, cuda means cuda:LOCAL_RANK")
    models.add_argument("--compile", default="off", choices=("off", *COMPILE_MODES),
                        help="torch.compile the DiT blocks (dynamic shapes; the first video compiles a while)")
    scale = parser.add_argument_group("several processes (under torchrun)")
    scale.add_argument("--parallel", default="none", choices=PARALLEL_MODES,
                       help="one video on several processes: cfg (2: negative and positive prompt apart), "
                            "sequence (N: the attention heads split, Ulysses), cfg+sequence (2 x N)")
    scale.add_argument("--sequence-size", type=int,
                       help="processes per video in sequence parallelism (default: all of the launch's; with "
                            "generate-batch a smaller size runs several videos side by side)")
    video = parser.add_argument_group("video")
    if not batch:
        video.add_argument("--image", help="i2v: the first frame (png, jpg, ...)")
        video.add_argument("--video", help="continue: the clip to continue")
    video.add_argument("--width", type=int, help="pixels, a multiple of 64 (t2v default: the variant's)")
    video.add_argument("--height", type=int)
    length = video.add_mutually_exclusive_group()
    length.add_argument("--frames", type=int, help="pixel frames of the result, 1 + 8k")
    length.add_argument("--seconds", type=float, default=5.0, help="length at 24 fps (default %(default)s)")
    video.add_argument("--fps", type=int, default=24)
    if not batch:
        video.add_argument("--output", default="pyramid_flow.mp4",
                           help="an .mp4, or an image file (.png, .jpg, .webp) for a 1-frame result such as the "
                                "1024p model's")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=_per_stage, help="first frame, per stage (default: the variant's, 20,20,20)")
    sampling.add_argument("--video-steps", type=_per_stage, help="later units, per stage (default 10,10,10)")
    sampling.add_argument("--guidance", type=_per_stage_float,
                          help="first-frame guidance scale (default: the variant's, 7 at 384p, 9 at 768p and 1024p)")
    sampling.add_argument("--video-guidance", type=_per_stage_float,
                          help="video guidance scale (default 5; 4 for i2v, as the reference README)")
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--history-frames", type=int, help="keep at most this many past latent frames")
    sampling.add_argument("--recent-units", type=int, default=1, help="recent units at full stage resolution")
    sampling.add_argument("--vae-tile", type=_tile_size, default="auto",
                          help="VAE tiles: auto (the default: whole frames when they fit the free memory, "
                               "else the largest tiles that do, smaller ones after an out-of-memory error), "
                               "0 (whole frames) or pixels (e.g. 512)")


def show_cache(clear: bool) -> str:
    """``python -m pyramid_core cache``: the cache file, what it holds per GPU, Triton's autotune
    entries of our kernels; with ``clear`` they are deleted and listed."""
    from .attention import disk_cache

    if clear:
        removed = disk_cache.clear()
        return "\n".join(["removed:", *(f"  {p}" for p in removed)]) if removed else "nothing to remove"
    lines = [f"attention cache: {disk_cache.shared.path}"
             + ("" if disk_cache.shared.path.is_file() else " (empty)")]
    for machine, sections in disk_cache.shared.entries().items():
        lines.append(f"  {machine}")
        for section, entries in sections.items():
            for key, value in entries.items():
                lines.append(f"    {section}: {key} -> {value}")
    autotune = disk_cache.triton_autotune_files()
    lines.append(f"Triton autotune results of our kernels: {len(autotune)} file(s)"
                 + (f" under {autotune[0].parent.parent}" if autotune else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pyramid_core", description="Pyramid Flow video generation")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate a video and write an mp4")
    gen.add_argument("mode", choices=("t2v", "i2v", "continue"), help="text-to-video, image-to-video, continuation")
    gen.add_argument("--prompt", required=True)
    _add_generation_options(gen, batch=False)
    batch = commands.add_parser(
        "generate-batch", help="generate every job of a JSONL file (resumable; under torchrun on every process)",
        description="One job per JSONL line: {\"id\": \"fox-1\", \"prompt\": \"...\", \"seed\": 1, \"seconds\": 5}, "
                    "plus any generate option with _ for - (negative_prompt, width, steps, ...), \"image\" "
                    "(image-to-video) or \"video\" (continuation). The options below are every job's defaults.")
    batch.add_argument("--prompts", required=True, help="the jobs, a JSONL file")
    batch.add_argument("--out-dir", required=True,
                       help="writes <id>.mp4 (<id>.png for one frame) and results.jsonl; a rerun skips finished jobs")
    batch.add_argument("--save-latents", action="store_true", help="also write <id>.safetensors with the latents")
    _add_generation_options(batch, batch=True)
    fit = commands.add_parser("fit-preview", help="fit the preview colours to a VAE on your images and clips")
    fit.add_argument("--vae", required=True, help="the VAE: folder or single file")
    fit.add_argument("--inputs", nargs="+", required=True, help="images, videos, or folders of them")
    fit.add_argument("--out", default="pyramid_flow_preview.json",
                     help="the factors (JSON); put it in ComfyUI's models/vae and pick it on the DiT Loader")
    fit.add_argument("--size", type=int, default=256, help="longer side in pixels the inputs are scaled to")
    fit.add_argument("--frames", type=int, default=17, help="frames read from each video, 1 + 8k")
    fit.add_argument("--dtype", default="fp32", choices=("bf16", "fp16", "fp32"))
    fit.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    commands.add_parser("doctor", help="versions, devices, attention backends and recommended settings "
                                       "(what a bug report needs)", add_help=False)
    cache = commands.add_parser("cache", help="where the attention choices, self-check verdicts and kernel "
                                              "autotuning of this machine are kept; --clear forgets them")
    cache.add_argument("--clear", action="store_true", help="delete them (the next run measures again)")
    for name, help_text in HUB_TOOLS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    for name, (_, help_text) in TRAINING_TOOLS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "doctor":
        from .doctor import main as doctor_main

        return doctor_main(argv[1:])
    if argv and argv[0] in HUB_TOOLS:
        from .hub.cli import main as hub_main

        return hub_main(argv)
    if argv and argv[0] in TRAINING_TOOLS:
        from .training import cli as training_cli

        return getattr(training_cli, TRAINING_TOOLS[argv[0]][0])(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "cache":
        print(show_cache(args.clear))
        return 0
    if args.command == "fit-preview":
        try:
            print(fit_preview(args))
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "generate" and args.mode == "i2v" and not args.image:
        print("error: i2v needs --image", file=sys.stderr)
        return 2
    if args.command == "generate" and args.mode == "continue" and not args.video:
        print("error: continue needs --video", file=sys.stderr)
        return 2
    try:
        if args.command == "generate-batch":
            return 1 if generate_batch(args)["failed"] else 0
        path = generate(args)
    except (ValueError, FileNotFoundError, MemoryError) as err:
        report_launch_error(f"error: {err}")
        return 2
    if path is not None:
        print(path)
    return 0
