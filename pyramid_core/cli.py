"""Command line: ``python -m pyramid_core generate {t2v,i2v,continue} ...`` and ``fit-preview``.

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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from .compile import COMPILE_MODES, check_compile_available, compile_dit
from .latents import decode_from_latents
from .sampling import HistoryConfig, continue_video, encode_text, image_to_video, image_to_pixels, text_to_video
from .sampling.settings import SamplingSettings
from .sizes import (VAE_TEMPORAL_FACTOR, check_sampler_fits, check_video_size, frames_for_seconds, free_host_memory,
                    latent_frames, latent_shape)
from .variants import (DEFAULT_NEGATIVE_PROMPT, IMAGE_TO_VIDEO_GUIDANCE, PROMPT_SUFFIX, VARIANTS, choose_variant,
                       get_variant)
from .video_io import IMAGE_SUFFIXES, frames_to_pixels, frames_to_uint8, read_image, read_video, write_image, write_video

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


def _load_models(args, paths: tuple[Path, Path, Path]):
    from .loading import load_dit, load_vae, model_kind, resolve_dtype
    from .models.text_encoders import PyramidTextEncoder

    dit_path, vae_path, text_path = paths
    dit = load_dit(dit_path, dtype=args.dtype, device=args.device)
    if args.compile != "off":
        compile_dit(dit, mode=args.compile, device=args.device)
    variant, why = choose_variant(model_kind(dit), str(dit_path), args.variant or "auto")
    print(f"variant {why}", file=sys.stderr)
    vae = load_vae(vae_path, dtype=args.vae_dtype or args.dtype, device=args.device)
    text_encoder = PyramidTextEncoder.from_pretrained(text_path, dtype=resolve_dtype(args.dtype), device=args.device)
    return dit, vae, text_encoder, variant


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


def _trim_to_vae_length(frames: torch.Tensor) -> torch.Tensor:
    """Keep the longest ``1 + 8k`` prefix (the causal VAE's clip lengths)."""
    keep = 1 + (frames.shape[0] - 1) // VAE_TEMPORAL_FACTOR * VAE_TEMPORAL_FACTOR
    if keep != frames.shape[0]:
        print(f"note: using the first {keep} of {frames.shape[0]} frames (the VAE takes 1 + 8k frames)", file=sys.stderr)
    return frames[:keep]


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


def _sampling(args, variant) -> dict:
    """Steps and guidance: the command line's, else the reference's for this variant and mode."""
    video_guidance = IMAGE_TO_VIDEO_GUIDANCE if args.mode == "i2v" else variant.video_guidance_scale
    return dict(steps=args.steps or list(variant.steps), video_steps=args.video_steps or list(variant.video_steps),
                guidance_scale=variant.guidance_scale if args.guidance is None else args.guidance,
                video_guidance_scale=video_guidance if args.video_guidance is None else args.video_guidance)


def _check_sampling(args, variant) -> None:
    sampling = _sampling(args, variant)
    SamplingSettings.create(variant.num_stages, sampling["steps"], sampling["video_steps"],
                            sampling["guidance_scale"], sampling["video_guidance_scale"])


def _check_args(args) -> tuple[int, tuple[Path, Path, Path]]:
    """Everything that can be checked before a model loads; returns the pixel frame count and
    the model paths."""
    from .loading import check_dtype_supported

    _check_device(args.device)
    for dtype in {args.dtype, args.vae_dtype or args.dtype}:
        check_dtype_supported(dtype, args.device)
    if args.compile != "off":
        check_compile_available(args.device)
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
    paths = _resolve_paths(args)
    variant = _expected_variant(args, paths[0])
    if variant.image_only and num_frames > 1:
        raise ValueError(f"{variant.name} makes single images: ask for --frames 1 (or --seconds 0), or use a "
                         "384p or 768p video model")
    width, height = (args.width, args.height) if args.width is not None else (variant.width, variant.height)
    free = free_host_memory()
    if free is not None:   # the noise of the whole video is drawn in host memory
        check_sampler_fits(latent_shape(width, height, num_frames), free, "host memory")
    return num_frames, paths


def generate(args) -> Path:
    num_frames, paths = _check_args(args)
    history = HistoryConfig(recent_units=args.recent_units, max_frames=args.history_frames)
    dit, vae, text_encoder, variant = _load_models(args, paths)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    text = encode_text(text_encoder, args.prompt, args.negative_prompt, args.prompt_suffix)
    sampling = _sampling(args, variant)
    common = dict(variant=variant, video_steps=sampling["video_steps"],
                  video_guidance_scale=sampling["video_guidance_scale"], history=history, generator=generator,
                  callback=_progress_bar())
    if args.mode == "t2v":
        latents = text_to_video(dit, text, width=args.width or variant.width, height=args.height or variant.height,
                                num_frames=num_frames, steps=sampling["steps"],
                                guidance_scale=sampling["guidance_scale"], **common)
    elif args.mode == "i2v":
        image = image_to_pixels(read_image(args.image)).to(args.device)
        latents = image_to_video(dit, text, image=image, vae=vae, num_frames=num_frames,
                                 width=args.width, height=args.height, **common)
    else:
        frames, _ = read_video(args.video)
        pixels = frames_to_pixels(_trim_to_vae_length(frames)).to(args.device)
        latents = continue_video(dit, text, video=pixels, vae=vae, num_frames=num_frames, **common)
    pixels = decode_from_latents(vae, latents, variant, chunk_size=1, tile_size=args.vae_tile)
    frames = frames_to_uint8(pixels)[0]
    if Path(args.output).suffix.lower() in IMAGE_SUFFIXES:
        if frames.shape[0] != 1:
            raise ValueError(f"--output {args.output} is an image but the result has {frames.shape[0]} frames")
        return write_image(args.output, frames[0])
    return write_video(args.output, frames, fps=args.fps)


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
    frames = _trim_to_vae_length(frames[:max_frames])
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pyramid_core", description="Pyramid Flow video generation")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate a video and write an mp4")
    gen.add_argument("mode", choices=("t2v", "i2v", "continue"), help="text-to-video, image-to-video, continuation")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT)
    gen.add_argument("--prompt-suffix", default=PROMPT_SUFFIX, help="appended to the prompt (default: %(default)r)")
    models = gen.add_argument_group("models")
    models.add_argument("--model-dir", help="official folder (diffusion_transformer_*/, causal_video_vae/, text encoders)")
    models.add_argument("--dit", help="DiT folder or single .safetensors file")
    models.add_argument("--vae", help="VAE folder or single .safetensors file")
    models.add_argument("--text-encoders", help="folder with tokenizer*/ and text_encoder*/")
    models.add_argument("--variant", choices=sorted(VARIANTS), help="default: detected from the DiT")
    models.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    models.add_argument("--vae-dtype", choices=("bf16", "fp16", "fp32"), help="default: --dtype")
    models.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    models.add_argument("--compile", default="off", choices=("off", *COMPILE_MODES),
                        help="torch.compile the DiT blocks (dynamic shapes; the first video compiles a while)")
    video = gen.add_argument_group("video")
    video.add_argument("--image", help="i2v: the first frame (png, jpg, ...)")
    video.add_argument("--video", help="continue: the clip to continue")
    video.add_argument("--width", type=int, help="pixels, a multiple of 64 (t2v default: the variant's)")
    video.add_argument("--height", type=int)
    length = video.add_mutually_exclusive_group()
    length.add_argument("--frames", type=int, help="pixel frames of the result, 1 + 8k")
    length.add_argument("--seconds", type=float, default=5.0, help="length at 24 fps (default %(default)s)")
    video.add_argument("--fps", type=int, default=24)
    video.add_argument("--output", default="pyramid_flow.mp4",
                       help="an .mp4, or an image file (.png, .jpg, .webp) for a 1-frame result such as the 1024p model's")
    sampling = gen.add_argument_group("sampling")
    sampling.add_argument("--steps", type=_per_stage, help="first frame, per stage (default: the variant's, 20,20,20)")
    sampling.add_argument("--video-steps", type=_per_stage, help="later units, per stage (default 10,10,10)")
    sampling.add_argument("--guidance", type=_per_stage_float,
                          help="first-frame guidance scale (default: the variant's, 7 at 384p, 9 at 768p and 1024p)")
    sampling.add_argument("--video-guidance", type=_per_stage_float,
                          help="video guidance scale (default 5; 4 for i2v, as the reference README)")
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--history-frames", type=int, help="keep at most this many past latent frames")
    sampling.add_argument("--recent-units", type=int, default=1, help="recent units at full stage resolution")
    sampling.add_argument("--vae-tile", type=int, help="decode in tiles of this many pixels (saves memory)")
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
    for name, (_, help_text) in TRAINING_TOOLS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "doctor":
        from .doctor import main as doctor_main

        return doctor_main(argv[1:])
    if argv and argv[0] in TRAINING_TOOLS:
        from .training import cli as training_cli

        return getattr(training_cli, TRAINING_TOOLS[argv[0]][0])(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "fit-preview":
        try:
            print(fit_preview(args))
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.mode == "i2v" and not args.image:
        print("error: i2v needs --image", file=sys.stderr)
        return 2
    if args.mode == "continue" and not args.video:
        print("error: continue needs --video", file=sys.stderr)
        return 2
    try:
        path = generate(args)
    except (ValueError, FileNotFoundError, MemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0
