"""Command-line entry points of the training tools.

    python -m pyramid_core.training.cli train-vae --config vae.yaml [key=value ...]
    python -m pyramid_core.training.cli train-dit --config dit.yaml [key=value ...]
    python -m pyramid_core.training.cli extract-latents --anno in.jsonl --vae causal_video_vae/ ...
    python -m pyramid_core.training.cli extract-text --anno in.jsonl --text-encoders ckpt/ ...

Each works under ``torchrun`` too. ``pyramid_core.cli`` forwards its ``train-vae``,
``train-dit``, ``extract-latents`` and ``extract-text`` sub-commands to the functions here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .config import ConfigError, VAETrainConfig, load_config, parse_overrides


def _run_trainer(argv: Sequence[str] | None, prog: str, description: str, config_cls, train) -> int:
    """Parse ``--config FILE [key=value ...]`` into ``config_cls``, run ``train``, print its summary."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help=f"JSON, YAML or TOML file with {config_cls.__name__} keys")
    parser.add_argument("overrides", nargs="*", help="key=value pairs applied after the file (JSON values)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(config_cls, args.config, parse_overrides(args.overrides))
    except ConfigError as err:
        parser.error(str(err))
    print(json.dumps(train(cfg)))
    return 0


def train_vae_main(argv: Sequence[str] | None = None) -> int:
    from .vae_trainer import train_vae

    return _run_trainer(argv, "train-vae", "Train the causal video VAE.", VAETrainConfig, train_vae)


def train_dit_main(argv: Sequence[str] | None = None) -> int:
    from .dit_trainer import DiTTrainConfig, train_dit

    return _run_trainer(argv, "train-dit", "Train or fine-tune (LoRA) a pyramid DiT.", DiTTrainConfig, train_dit)


def _buckets(text: str) -> list[tuple[int, int]]:
    """``"640x384,384x640"`` -> [(640, 384), (384, 640)]."""
    try:
        return [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write sizes as WxH[,WxH...]") from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--anno", required=True, help="input annotation JSONL")
    parser.add_argument("--out-dir", required=True, help="folder for the feature files")
    parser.add_argument("--out-jsonl", required=True, help="annotation JSONL to write, with feature paths")
    parser.add_argument("--data-root", default="", help="relative paths in --anno are under this folder")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def extract_latents_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="extract-latents", description="Encode videos/images to VAE latents.")
    _common(parser)
    parser.add_argument("--vae", required=True, help="causal_video_vae folder or single file")
    parser.add_argument("--sizes", type=_buckets, default=[(640, 384)], help="buckets WxH[,WxH...]")
    parser.add_argument("--frames", type=int, default=121, help="most pixel frames per video (1 + 8k)")
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--mean", action="store_true", help="store posterior means instead of samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=None, help="encode in chunks of this many frames")
    parser.add_argument("--tile-size", type=int, default=None, help="encode in tiles of this many pixels")
    args = parser.parse_args(argv)
    if args.frames < 1 or (args.frames - 1) % 8 or any(w % 8 or h % 8 for w, h in args.sizes):
        parser.error("--frames must be 1 + 8k and --sizes multiples of 8")
    from ..loading import load_vae
    from .distributed import cleanup, init_distributed, setup_logging
    from .features import extract_latents

    info = init_distributed(args.device)
    setup_logging(info)
    vae = load_vae(args.vae, dtype=args.dtype, device=info.device)
    stats = extract_latents(vae, args.anno, args.out_dir, args.out_jsonl, args.sizes, args.frames,
                            args.fps, args.data_root, info, args.seed, not args.mean, args.chunk_size, args.tile_size)
    print(json.dumps({"rank": info.rank, **stats}))
    cleanup()
    return 0


def extract_text_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="extract-text", description="Encode captions to text features.")
    _common(parser)
    parser.add_argument("--text-encoders", required=True, help="checkpoint folder with tokenizer*/text_encoder*/")
    parser.add_argument("--family", default=None, help="flux or mmdit (default: detected)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="bf16")
    args = parser.parse_args(argv)
    from ..loading import resolve_dtype
    from ..models.text_encoders import PyramidTextEncoder
    from .distributed import cleanup, init_distributed, setup_logging
    from .features import extract_text_features

    info = init_distributed(args.device)
    setup_logging(info)
    encoder = PyramidTextEncoder.from_pretrained(args.text_encoders, family=args.family,
                                                 dtype=resolve_dtype(args.dtype), device=info.device)
    stats = extract_text_features(encoder.encode_prompt, args.anno, args.out_dir, args.out_jsonl, args.data_root,
                                  info, args.batch_size)
    print(json.dumps({"rank": info.rank, **stats}))
    cleanup()
    return 0


COMMANDS = {
    "train-vae": train_vae_main,
    "train-dit": train_dit_main,
    "extract-latents": extract_latents_main,
    "extract-text": extract_text_main,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m pyramid_core.training.cli {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
