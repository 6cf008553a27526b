"""Spatial tiling: run the encoder or decoder on overlapping tiles and blend the seams.

Everything is planned on the latent grid, so tile starts, blend widths and kept regions
line up with latent pixels for every tile size that is a multiple of the spatial factor
(the reference planned in pixels and produced wrong sizes for tiles that were not
multiples of 32 px). For those multiples of 32 px the plan equals the reference's: tiles
of ``t`` latents at stride ``t - t // 4``, neighbours linearly blended over ``t // 4``.

Tiles are blended in raster order, each with the already-blended tile above it and then
the one to its left, and each keeps its first ``stride`` rows and columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

OVERLAP_FRACTION = 0.25  # share of a tile blended with each neighbour, as in the reference


@dataclass(frozen=True)
class TilePlan:
    """Square tiles of ``tile`` latent pixels overlapping their neighbours by ``overlap``."""

    tile: int
    overlap: int

    @classmethod
    def from_pixels(cls, tile_size: int, spatial_factor: int) -> TilePlan:
        if tile_size < spatial_factor or tile_size % spatial_factor:
            raise ValueError(
                f"tile_size must be a positive multiple of {spatial_factor} px (the VAE's spatial factor), "
                f"got {tile_size}"
            )
        tile = tile_size // spatial_factor
        return cls(tile=tile, overlap=int(tile * OVERLAP_FRACTION))

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def starts(self, size: int) -> range:
        """Tile starts along an axis of ``size`` latent pixels."""
        return range(0, size, self.stride)


def _blend_into(previous: torch.Tensor, current: torch.Tensor, extent: int, dim: int) -> None:
    """Cross-fade the first ``extent`` slices of ``current`` from the last ones of ``previous``."""
    extent = min(previous.shape[dim], current.shape[dim], extent)
    if extent == 0:
        return
    shape = [1] * current.ndim
    shape[dim] = extent
    ramp = (torch.arange(extent, device=current.device, dtype=torch.float32) / extent).view(shape)
    head = current.narrow(dim, 0, extent)
    tail = previous.narrow(dim, previous.shape[dim] - extent, extent)
    head.copy_(tail * (1 - ramp) + head * ramp)


def run_tiled(
    network: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    plan: TilePlan,
    in_scale: int,
    out_scale: int,
) -> torch.Tensor:
    """Apply ``network`` tile by tile to x (B, C, T, H, W) and assemble the blended output.

    ``in_scale`` / ``out_scale`` are the sizes of one latent pixel in x and in the output
    (encoder: 8 and 1; decoder: 1 and 8). Only one row of tiles is held at a time.
    """
    height, width = x.shape[-2] // in_scale, x.shape[-1] // in_scale   # latent pixels
    tile_in = plan.tile * in_scale
    blend, keep = plan.overlap * out_scale, plan.stride * out_scale
    output = None
    previous_row: list[torch.Tensor] = []
    for i in plan.starts(height):
        row: list[torch.Tensor] = []
        for c, j in enumerate(plan.starts(width)):
            y0, x0 = i * in_scale, j * in_scale
            tile = network(x[..., y0 : y0 + tile_in, x0 : x0 + tile_in])   # (B, C', T', h, w)
            if previous_row:
                _blend_into(previous_row[c], tile, blend, dim=-2)
            if row:
                _blend_into(row[-1], tile, blend, dim=-1)
            row.append(tile)
            if output is None:
                output = tile.new_empty(*tile.shape[:-2], height * out_scale, width * out_scale)
            oy, ox = i * out_scale, j * out_scale
            output[..., oy : oy + keep, ox : ox + keep] = tile[..., :keep, :keep]
        previous_row = row
    return output
