"""VAE decode and encode that fit the memory that is free: tiles chosen for it, smaller on OOM.

The working memory of a chunked decode pass grows with the area of a tile (each causal
conv's cached frames, the full-resolution activations of one temporal chunk: about 1.7 MB
per latent pixel for the released VAE in bf16, 25 GB for whole 1280x768 frames), not with
the length of the video. :func:`working_bytes` measures it for the VAE at hand by running
its real layer stack on the meta device under :class:`~pyramid_core.models.live_bytes.LiveBytes`
(shapes only, no arithmetic; well under a second, once per config, dtype and chunk) at two
tile areas and fitting ``a + b * area``. :func:`plan_tiles` adds what the whole video holds
(the output, the tiles of the rows being blended) and returns the tile sizes from whole
frames down, each with its predicted peak. :func:`decode_fitting` / :func:`encode_fitting`
start at the largest that fits the free memory and, if the device still runs out of memory,
retry with the next smaller one. Tiles are blended exactly as an explicit ``tile_size``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..live_bytes import LiveBytes
from .tiling import TilePlan

log = logging.getLogger("pyramid_core.vae")

# What LiveBytes cannot see: kernel workspaces (cuDNN's for 3-D convolutions are large) and the
# caching allocator's rounding. Issue 25's H200 measurement of a 1280x768 decode (31.2 GiB
# allocated) against this module's count of the same decode (25.4 GB) gives the CUDA margin.
MARGIN = {"cuda": 1.35}
DEFAULT_MARGIN = 1.1      # the CPU: oneDNN's scratch buffers, the allocator's rounding
# Tile sizes tried, in pixels, largest first (multiples of 64 px: 8 latent pixels, so the
# 25 % blend is a whole number of latent pixels); 128 px is the smallest worth its seams.
TILE_STEP = 64
SMALLEST_TILE = 128

OOM_ERRORS = (torch.OutOfMemoryError, MemoryError)


@dataclass(frozen=True)
class TileChoice:
    """One way to run the VAE: ``tile_size`` pixels (None: whole frames) and its predicted peak."""

    tile_size: int | None
    peak_bytes: int


def free_memory(device: torch.device) -> int | None:
    """Bytes that tensors on ``device`` can still take (None where nobody says).

    CUDA: free on the device plus what PyTorch's caching allocator holds unused; CPU: the
    RAM available now."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
        # A cap set with torch.cuda.set_per_process_memory_fraction binds before the device is full.
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _: 1.0)(device)
        return max(0, min(free, int(fraction * total) - reserved)) + reserved - allocated
    if device.type == "cpu":
        from ...sizes import free_host_memory

        return free_host_memory()
    return None


# ---------------------------------------------------------------------------- measuring

@lru_cache(maxsize=32)
def _meta_vae(config_json: str, dtype: torch.dtype):
    from .model import CausalVideoVAE

    with torch.device("meta"):
        return CausalVideoVAE.from_config(json.loads(config_json)).to(dtype)


def _config_key(vae) -> str:
    return json.dumps({k: v for k, v in dict(vae.config).items() if not k.startswith("_")}, sort_keys=True,
                      default=list)


@lru_cache(maxsize=256)
def _fit(config_json: str, dtype: torch.dtype, kind: str, frames: int, chunk_size: int | None) -> tuple[float, float]:
    """(a, b) of ``a + b * area``: peak bytes of one pass over a batch of 1, ``frames`` frames,
    less its output and the output's concatenation (:func:`plan_tiles` counts those for the
    whole video).

    Measured at areas of 16x16 and 32x32 latent pixels; ``frames`` is in latent frames for
    a decode and pixel frames for an encode."""
    meta = _meta_vae(config_json, dtype)
    side = {"decode": 1, "encode": meta.spatial_factor}[kind]
    channels = {"decode": meta.latent_channels, "encode": meta.config.encoder_in_channels}[kind]
    network = {"decode": meta._decode_pass, "encode": meta._encode_pass}[kind]
    peaks = []
    for n in (16, 32):
        x = torch.empty(1, channels, frames, n * side, n * side, device="meta", dtype=dtype)
        with torch.no_grad(), LiveBytes("meta") as meter:
            out = meta._run_pieces(network, x, chunk_size, None)
        peaks.append(meter.peak - 2 * out.numel() * out.element_size())
    slope = (peaks[1] - peaks[0]) / (32 * 32 - 16 * 16)
    return peaks[0] - slope * 16 * 16, slope


def working_bytes(vae, kind: str, area: int, frames: int, chunk_size: int | None, batch: int = 1) -> int:
    """Peak bytes of one decode (``kind="decode"``) or encode pass over a tile of ``area``
    latent pixels, ``frames`` input frames, in ``chunk_size`` temporal chunks (None: all at once).

    Beyond three chunks the working set no longer grows with the length (the caches and one
    chunk's activations are all that live; the outputs are counted by :func:`plan_tiles`),
    so the measurement runs at most three chunks."""
    if chunk_size is not None:
        first = 1 + chunk_size
        frames = min(frames, first + 2 * chunk_size)
    a, b = _fit(_config_key(vae), vae.dtype, kind, frames, chunk_size)
    return math.ceil(batch * max(a + b * area, 0.0))


# ---------------------------------------------------------------------------- planning

def _tile_sizes(height: int, width: int) -> list[int | None]:
    """Whole frames, then tiles from just under the larger side down to SMALLEST_TILE (pixels)."""
    largest = (max(height, width) - 1) // TILE_STEP * TILE_STEP
    return [None, *range(largest, SMALLEST_TILE - 1, -TILE_STEP)]


def plan_tiles(vae, kind: str, shape: tuple[int, ...], chunk_size: int | None, device) -> list[TileChoice]:
    """Every tile size worth trying for an input of ``shape``, whole frames first, with its
    predicted peak on ``device`` (bytes beyond the weights and the input).

    Args:
        kind: ``"decode"`` (shape: latents (B, C, T, h, w)) or ``"encode"`` (pixels (B, 3, F, H, W)).
        chunk_size: temporal chunk, as :meth:`CausalVideoVAE.decode` / ``encode`` take it.
    """
    batch, _, frames, height, width = shape
    s = vae.spatial_factor
    lat_h, lat_w = (height, width) if kind == "decode" else (height // s, width // s)
    out_frames, out_channels, out_scale = (
        (1 + (frames - 1) * vae.temporal_factor, vae.config.decoder_out_channels, s) if kind == "decode"
        else (1 + (frames - 1) // vae.temporal_factor, 2 * vae.latent_channels, 1))
    pixel = batch * out_channels * out_frames * out_scale * out_scale * vae.dtype.itemsize  # per latent pixel out
    whole_out = pixel * lat_h * lat_w
    margin = MARGIN.get(torch.device(device).type, DEFAULT_MARGIN)
    choices = []
    for tile_size in _tile_sizes(lat_h * s, lat_w * s):
        if tile_size is None:
            tile_h, tile_w, held = lat_h, lat_w, 0
        else:
            plan = TilePlan.from_pixels(tile_size, s)
            tile_h, tile_w = min(plan.tile, lat_h), min(plan.tile, lat_w)
            # run_tiled holds the last row's tiles and this row's while it blends them.
            row_width = sum(min(plan.tile, lat_w - j) for j in plan.starts(lat_w))
            rows = [min(plan.tile, lat_h - i) for i in plan.starts(lat_h)]
            held = pixel * row_width * max(a + b for a, b in zip(rows, rows[1:] + [0]))
        tile_out = pixel * tile_h * tile_w
        work = working_bytes(vae, kind, tile_h * tile_w, frames, chunk_size, batch)
        if kind == "encode":     # the input tile in the VAE's dtype and layout (channels-last on the CPU)
            work += batch * vae.config.encoder_in_channels * frames * tile_h * tile_w * s * s * vae.dtype.itemsize
        # A tile's chunk outputs and their concatenation, the rows being blended and the
        # assembled output (the finite check at the end, half an output, comes after the rest is freed).
        peak = margin * work + 2 * tile_out + held + (whole_out if tile_size is not None else 0)
        choices.append(TileChoice(tile_size, math.ceil(peak)))
    return choices


def _first_fitting(choices: list[TileChoice], free: int | None) -> int:
    if free is None:
        return 0
    for index, choice in enumerate(choices):
        if choice.peak_bytes <= free:
            return index
    return len(choices) - 1


def choose_tiles(choices: list[TileChoice], free: int | None) -> TileChoice:
    """The choice :func:`run_fitting` tries first for ``free`` bytes."""
    return choices[_first_fitting(choices, free)]


def run_fitting(run, choices: list[TileChoice], free: int | None, device, what: str):
    """``run(tile_size)`` with the largest choice that fits ``free`` bytes; on an out-of-memory
    error, again with the next smaller one. Raises ``MemoryError`` when the smallest fails."""
    start = _first_fitting(choices, free)
    if start:
        log.info("%s in %d px tiles to fit %.1f GiB free", what, choices[start].tile_size, (free or 0) / 2**30)
    for choice in choices[start:]:
        try:
            return run(choice.tile_size)
        except OOM_ERRORS:
            pass                                  # leave the except block first: it holds the failed frames
        _release(device)
        log.warning("%s ran out of memory with %s; retrying with smaller tiles", what,
                    f"{choice.tile_size} px tiles" if choice.tile_size else "whole frames")
    raise MemoryError(f"{what} ran out of memory even in {choices[-1].tile_size} px tiles: free memory "
                      "(unload other models, close other programs) or use fewer frames or a smaller size")


def _release(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def parse_tile_size(value) -> int | str | None:
    """A user's tile size: ``"auto"`` (from the free memory), 0 (whole frames: None) or pixels
    (a positive multiple of 8); ``ValueError`` saying what to give otherwise."""
    from .model import AUTO

    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        pixels = int(value)
        if isinstance(value, bool) or pixels != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"tile size {value!r}: give auto, 0 (whole frames) or pixels (a multiple of 8, e.g. 512)") from None
    if pixels < 0 or pixels % 8:
        raise ValueError(f"tile size {pixels}: give auto, 0 (whole frames) or a positive multiple of 8 px, e.g. 512")
    return pixels or None


def decode_fitting(vae, latents: torch.Tensor, chunk_size: int | None = 1, free_bytes: int | None = None,
                   progress=None) -> torch.Tensor:
    """:meth:`CausalVideoVAE.decode` in the largest tiles that fit (whole frames when they do).

    ``free_bytes``: memory to fit in; None asks the device (:func:`free_memory`)."""
    device = latents.device
    free = free_memory(device) if free_bytes is None else free_bytes
    choices = plan_tiles(vae, "decode", tuple(latents.shape), chunk_size, device)
    return run_fitting(lambda tile: vae.decode(latents, chunk_size=chunk_size, tile_size=tile, progress=progress),
                       choices, free, device, "VAE decode")


def encode_fitting(vae, pixels: torch.Tensor, chunk_size: int | None = None, free_bytes: int | None = None,
                   progress=None):
    """:meth:`CausalVideoVAE.encode` in the largest tiles that fit (whole frames when they do)."""
    device = pixels.device
    free = free_memory(device) if free_bytes is None else free_bytes
    choices = plan_tiles(vae, "encode", tuple(pixels.shape), chunk_size, device)
    return run_fitting(lambda tile: vae.encode(pixels, chunk_size=chunk_size, tile_size=tile, progress=progress),
                       choices, free, device, "VAE encode")


def decode_memory_required(vae, shape: tuple[int, ...], chunk_size: int | None = 1, device="cuda") -> int:
    """Bytes a whole-frame decode of latents of ``shape`` needs (what to ask ComfyUI to free)."""
    return plan_tiles(vae, "decode", tuple(shape), chunk_size, device)[0].peak_bytes


def encode_memory_required(vae, shape: tuple[int, ...], chunk_size: int | None = None, device="cuda") -> int:
    """Bytes a whole-frame encode of pixels of ``shape`` needs (what to ask ComfyUI to free)."""
    return plan_tiles(vae, "encode", tuple(shape), chunk_size, device)[0].peak_bytes
