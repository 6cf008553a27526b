"""``python -m pyramid_core download VARIANT`` and ``python -m pyramid_core pack-folder FOLDER``.

Examples::

    python -m pyramid_core download miniflux-384p --comfyui ~/ComfyUI          # single files
    python -m pyramid_core download miniflux-768p --comfyui ~/ComfyUI --fp8    # fp8 DiT and T5
    python -m pyramid_core download miniflux-384p --to pyramid-flow-miniflux   # the official folders
    python -m pyramid_core download sd3-768p --comfyui ~/ComfyUI --dry-run     # what it would fetch
    python -m pyramid_core pack-folder pyramid-flow-miniflux --comfyui ~/ComfyUI --dtype bf16
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..variants import VARIANTS
from . import catalog
from .download import (ChecksumError, bytes_left, check_space, existing_parent, fetch, human_size, in_place,
                       plan_download)


def comfyui_models(folder: str) -> Path:
    """The ``models`` folder of a ComfyUI folder (or the models folder itself)."""
    root = Path(folder).expanduser()
    if (root / "models").is_dir():
        return root / "models"
    if root.name == "models" and root.is_dir():
        return root
    raise FileNotFoundError(f"{root} is not a ComfyUI folder (it has no models/ folder): give the folder that "
                            "holds ComfyUI's main.py and models/")


def placement(root: Path, layout: str, comfyui: bool):
    """``place(file, path_in_repo) -> Path``: a release folder's own layout (``--to`` with the
    official layout), else ComfyUI's model folders under ``root``."""
    if layout == "official" and not comfyui:
        return lambda file, path: root / path

    def place(file: catalog.HubFile, path: str) -> Path:
        if file.is_folder:
            return root / file.directory / file.name / path[len(file.path):]
        return root / file.directory / file.name

    return place


def _download_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyramid_core download",
        description="Fetch the files a Pyramid Flow variant needs from the Hugging Face Hub (resumable: run it again "
                    "after an interruption; every file's checksum is verified). HF_ENDPOINT and HF_TOKEN apply.")
    parser.add_argument("variant", help=f"one of {', '.join(VARIANTS)}")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--comfyui", metavar="DIR", help="your ComfyUI folder: files go to its models/ folders")
    where.add_argument("--to", metavar="DIR",
                       help="a folder of its own: the official layout, for --model-dir (with --layout single: "
                            "DIR is used as a models folder, diffusion_models/ vae/ text_encoders/)")
    parser.add_argument("--layout", choices=catalog.LAYOUTS,
                        help="single: the single files ComfyUI users keep (default with --comfyui); official: the "
                             "release's folders (default with --to)")
    parser.add_argument("--fp8", action="store_true",
                        help="the fp8 DiT and T5-XXL single files (half the size; miniFLUX 384p/768p)")
    parser.add_argument("--dry-run", action="store_true", help="show the files, sizes and free space, fetch nothing")
    return parser


def download_main(argv: list[str]) -> int:
    args = _download_parser().parse_args(argv)
    comfyui = args.comfyui is not None
    layout = args.layout or ("single" if comfyui else "official")
    try:
        if args.fp8 and layout != "single":
            raise ValueError("--fp8 picks single files; it does not go with --layout official")
        files = catalog.files_for(args.variant, layout, fp8=args.fp8)
        root = comfyui_models(args.comfyui) if comfyui else Path(args.to).expanduser()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        planned = plan_download(files, placement(root, layout, comfyui))
    except (FileNotFoundError, ChecksumError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:                      # the Hub's and the network's errors, named
        print(f"error: could not list the files on the Hub: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    placed = {file.destination for file in planned if in_place(file)}
    left = {file.destination: 0 if file.destination in placed else bytes_left(file) for file in planned}
    print(f"Pyramid Flow {args.variant}, {layout} layout, into {root}:")
    for file in planned:
        shown = file.destination.relative_to(root).as_posix()
        state = "in place" if file.destination in placed else \
            f"{human_size(file.size - left[file.destination])} there, resumes" if left[file.destination] < file.size \
            else ""
        print(f"  {human_size(file.size):>9}  {shown}  ({file.repo}@{file.commit[:10]}){'  ' + state if state else ''}")
    total = sum(left.values())
    disk = existing_parent(root)
    print(f"to download: {human_size(total)} of {human_size(sum(f.size for f in planned))}; "
          f"free: {human_size(shutil.disk_usage(disk).free)} in {disk}")
    problems = check_space(planned, left)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    if args.dry_run:
        return 0
    try:
        for file in planned:
            if file.destination not in placed:
                fetch(file)
    except ChecksumError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped: run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as err:
        print(f"error: {type(err).__name__}: {err}\nrun the same command again to resume", file=sys.stderr)
        return 1
    print(_next_step(args.variant, layout, comfyui, root))
    return 0


def _next_step(variant: str, layout: str, comfyui: bool, root: Path) -> str:
    if comfyui:
        return (f"done: the loaders list the files under {root}; refresh the ComfyUI page (press R) and open a "
                "Pyramid Flow template")
    if layout == "official":
        return f"done: python -m pyramid_core generate t2v --model-dir {root} --variant {variant} --prompt \"...\""
    return f"done: point ComfyUI's extra_model_paths.yaml at {root}"


def main(argv: list[str]) -> int:
    """``download`` or ``pack-folder`` (the first item of ``argv``)."""
    if argv[0] == "download":
        return download_main(argv[1:])
    from .pack import pack_main

    return pack_main(argv[1:])
