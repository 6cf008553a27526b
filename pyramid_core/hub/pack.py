"""``python -m pyramid_core pack-folder``: official release folders -> the single files the loaders take.

The release keeps each model in a diffusers-style folder (``config.json`` and its weights; the
VAE's as a pickled ``diffusion_pytorch_model.bin``, read here with ``weights_only``). Packing
writes each DiT and the VAE as one ``.safetensors`` file with the same tensor names and the
folder's ``config.json`` in the file's metadata, named so that the DiT Loader's detection reads
the variant from the name (``pyramid_flow_miniflux_768p.safetensors``). The text encoders stay
folders (the Text Encoder Loader reads them), or use ComfyUI's t5xxl/clip_l files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..loading import WEIGHT_DTYPES, detect_kind, read_config, read_shapes, read_state_dict
from .cli import comfyui_models
from .download import human_size

DTYPES = ("keep", "bf16", "fp16", "fp32")
COMPONENT_PREFIXES = ("diffusion_transformer_", "causal_video_vae")


def components(folder: Path) -> list[Path]:
    """The model folders to pack: ``folder`` itself when it is one (a ``config.json`` beside
    weights), else its ``diffusion_transformer_*`` and ``causal_video_vae`` subfolders."""
    if (folder / "config.json").is_file():
        return [folder]
    found = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(COMPONENT_PREFIXES)
                   and (p / "config.json").is_file()) if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"{folder} is neither a model folder (config.json + weights) nor a release folder "
                                "holding diffusion_transformer_*/ or causal_video_vae/")
    return found


def packed_name(component: Path, kind: str, dtype: str) -> str:
    """``<release>_<384p|768p|image|vae>[_<dtype>].safetensors`` for a release's model folder,
    the release being its parent folder (``pyramid-flow-miniflux`` -> ``pyramid_flow_miniflux``);
    ``<folder name>[_<dtype>].safetensors`` for a folder named otherwise."""
    if component.name.startswith(COMPONENT_PREFIXES):
        what = "vae" if kind == "vae" else component.name.removeprefix("diffusion_transformer_")
        stem = f"{component.parent.name}_{what}"
    else:
        stem = component.name
    return stem.replace("-", "_").lower() + ("" if dtype == "keep" else f"_{dtype}") + ".safetensors"


def pack_component(component: Path, target_dir, dtype: str = "keep") -> Path:
    """Write one model folder as a single ``.safetensors`` file (atomically); returns its path.

    ``target_dir``: a folder, or ``target_dir(kind) -> folder`` for the kind the tensors show
    (``"flux"``, ``"mmdit"``, ``"vae"``). The weights are read once: a pickled ``.bin`` has no
    header to read the names from."""
    from safetensors.torch import save_file

    cast = None if dtype == "keep" else WEIGHT_DTYPES[dtype]
    tensors = read_state_dict(component, dtype_for=(lambda name: cast) if cast is not None else None)
    kind = detect_kind(tensors)
    target_dir = Path(target_dir(kind) if callable(target_dir) else target_dir)
    config = {k: v for k, v in (read_config(component) or {}).items() if not k.startswith("_")}
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / packed_name(component, kind, dtype)
    tmp = target.with_name(f".{target.stem}.tmp.safetensors")      # hidden from ComfyUI's lists while written
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"config": json.dumps(config), "format": "pt"})
    if read_shapes(tmp) != {k: tuple(v.shape) for k, v in tensors.items()}:
        tmp.unlink()
        raise OSError(f"{target}: the written file does not read back; is the disk full?")
    tmp.replace(target)
    return target


def pack_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyramid_core pack-folder",
        description="Turn official Pyramid Flow folders (a release folder, or one diffusion_transformer_*/ or "
                    "causal_video_vae/ folder) into the single .safetensors files the DiT and VAE loaders take.")
    parser.add_argument("folder", help="the release folder (e.g. pyramid-flow-miniflux) or one model folder of it")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--comfyui", metavar="DIR", help="your ComfyUI folder: DiTs to models/diffusion_models, "
                                                        "the VAE to models/vae")
    where.add_argument("--out", metavar="DIR", default=".", help="folder for the files (default: here)")
    parser.add_argument("--dtype", choices=DTYPES, default="keep",
                        help="keep the stored precision (default), or cast floating-point tensors (bf16 halves "
                             "an fp32 file)")
    args = parser.parse_args(argv)
    try:
        found = components(Path(args.folder).expanduser())
        models = comfyui_models(args.comfyui) if args.comfyui else None
        target_dir = Path(args.out) if models is None else \
            (lambda kind: models / ("vae" if kind == "vae" else "diffusion_models"))
        for component in found:
            target = pack_component(component, target_dir, args.dtype)
            print(f"{component} -> {target} ({human_size(target.stat().st_size)})")
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

