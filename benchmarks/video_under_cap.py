"""One whole text-to-video (sampling, then VAE decode) under a GPU memory cap; one JSON line.

    python benchmarks/video_under_cap.py DIT.safetensors --cap-gib 12 [--weights fp8_e4m3fn]
        [--block-swap N] [--resolution 768p] [--seconds 5] [--steps 6,6,6 --video-steps 3,3,3]

Run by ``gpu_check.py``'s ``memory_caps`` section, once per setting, each in a fresh process
(the cap, ``torch.cuda.set_per_process_memory_fraction``, and the allocator's state are per
process). The DiT is loaded the way the CLI loads it (fp8 straight from the file, block swap
from host memory); the VAE is the released config with random bf16 weights; the text
embeddings are random (the text encoders are not part of this measurement). Fewer steps than
the defaults keep the whole proof inside one device call: memory does not depend on the
step count, and the time ratios are taken between runs with the same steps.

Prints ``{"complete", "phase": {"sampling"|"decode": {"seconds", "peak_gib"}}, "tile_size", ...}``;
an out-of-memory error ends the run with ``complete: false`` and the phase it happened in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_check import random_text  # noqa: E402 -- beside this file

# "tiny" is for checking the script on a CPU with tiny models (tests/test_gpu_check.py).
RESOLUTIONS = {"384p": (640, 384), "768p": (1280, 768), "tiny": (128, 64)}


def _stages(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dit", type=Path, help="a DiT .safetensors file (gpu_check writes one with random weights)")
    parser.add_argument("--cap-gib", type=float, help="GPU memory this process may use (default: no cap)")
    parser.add_argument("--weights", default="bf16", choices=("bf16", "fp8_e4m3fn"))
    parser.add_argument("--block-swap", type=int, default=0)
    parser.add_argument("--resolution", default="768p", choices=sorted(RESOLUTIONS))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=_stages, default=[6, 6, 6])
    parser.add_argument("--video-steps", type=_stages, default=[3, 3, 3])
    parser.add_argument("--vae-config", type=Path, default=ROOT / "tests" / "data" / "manifests" / "CausalVideoVAE.json",
                        help="a VAE config (or a manifest holding released_config); default: the released one")
    parser.add_argument("--device", default="cuda", help="cuda (caps and peaks); cpu only checks that it runs")
    return parser.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    from pyramid_core.latents import denormalize_latents
    from pyramid_core.loading import load_dit
    from pyramid_core.models.block_swap import BlockSwap, transformer_blocks
    from pyramid_core.models.vae import CausalVideoVAE
    from pyramid_core.models.vae.budget import choose_tiles, decode_fitting, free_memory, plan_tiles
    from pyramid_core.sampling import text_to_video
    from pyramid_core.sizes import frames_for_seconds

    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.cap_gib and cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total), device)
    out = {"cap_gib": args.cap_gib, "weights": args.weights, "block_swap": args.block_swap,
           "resolution": args.resolution, "seconds_of_video": args.seconds, "steps": args.steps,
           "video_steps": args.video_steps, "complete": False, "phase": {}}
    phase = "load"
    try:
        started = time.perf_counter()
        dit = load_dit(args.dit, dtype="bf16", weight_dtype=None if args.weights == "bf16" else args.weights,
                       device="cpu" if args.block_swap else device)
        if args.block_swap:
            BlockSwap(dit, device, swapped=min(args.block_swap, len(transformer_blocks(dit))))
        config = json.loads(args.vae_config.read_text())
        with torch.device(device):
            vae = CausalVideoVAE.from_config(config.get("released_config", config))
        vae = vae.to(torch.bfloat16).eval().requires_grad_(False)
        _sync(device)
        out["phase"]["load"] = {"seconds": round(time.perf_counter() - started, 2),
                                "allocated_gib": round(torch.cuda.memory_allocated(device) / 2**30, 3) if cuda else None}
        width, height = RESOLUTIONS[args.resolution]
        variant = "miniflux-768p" if args.resolution == "768p" else "miniflux-384p"
        for phase in ("sampling", "decode"):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            started = time.perf_counter()
            with torch.no_grad():
                if phase == "sampling":
                    latents = text_to_video(dit, random_text(dit, device), width=width, height=height, variant=variant,
                                            num_frames=frames_for_seconds(args.seconds), steps=args.steps,
                                            video_steps=args.video_steps, generator=torch.Generator().manual_seed(0))
                else:
                    vae_latents = denormalize_latents(latents, variant).to(device, torch.bfloat16)
                    choices = plan_tiles(vae, "decode", tuple(vae_latents.shape), 1, device)
                    out["tile_size"] = choose_tiles(choices, free_memory(device)).tile_size
                    out["predicted_whole_frame_gib"] = round(choices[0].peak_bytes / 2**30, 2)
                    decode_fitting(vae, vae_latents, chunk_size=1)
            _sync(device)
            out["phase"][phase] = {"seconds": round(time.perf_counter() - started, 2),
                                   "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None}
        out["complete"] = True
    except (torch.OutOfMemoryError, MemoryError) as err:
        out["failed_in"], out["error"] = phase, str(err)[:300]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
