"""Feature extraction for DiT training: VAE latents and text features written to files.

Both extractors read an annotation JSONL, give row ``i`` to rank ``i % world_size``, skip
rows whose output file already exists (so a stopped extraction resumes where it was), write
each file atomically, and finally (rank 0, after a barrier) write an output JSONL: the input
rows that have their file, with ``latent`` / ``text_fea`` pointing at it. Rows that cannot be
read are logged and counted, never fatal.

Files match the reference: a latent file holds one tensor (1, 16, 1 + k, H/8, W/8) of raw
VAE latents (the DiT trainer normalises them for its variant, so one extraction serves every
variant, and latents extracted by the reference's tool load unchanged); a text file
holds ``{"prompt_embed": (1, 128, D), "prompt_attention_mask": (1, 128), "pooled_prompt_embed": (1, P)}``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .checkpoints import atomic_torch_save
from .data import decode_frames, nearest_bucket, probe_media, read_jsonl, resize_center_crop, resolve, write_jsonl
from .distributed import DistInfo, barrier

log = logging.getLogger("pyramid_core.training")


def _shard(rows: list[dict], info: DistInfo) -> list[tuple[int, dict]]:
    return [(i, row) for i, row in enumerate(rows) if i % info.world_size == info.rank]


def _output_path(row: dict, key: str, out_dir: Path, index: int, suffix: str, data_root: str | Path) -> Path:
    """The row's own ``key`` path if it has one (relative to ``data_root``, as its media are),
    else ``out_dir/<key>/<index>.pt`` (``out_dir`` as the user gave it: relative to the working
    directory, not to ``data_root``)."""
    given = row.get(key)
    if isinstance(given, str) and given:
        return resolve(given, data_root)
    return out_dir / key / f"{index:08d}{suffix}.pt"


def _finish(rows: list[dict], key: str, paths: dict[int, Path], out_jsonl: Path, info: DistInfo,
            stats: Counter) -> Counter:
    """After every rank is done, rank 0 writes the rows whose file exists."""
    barrier()
    if info.is_main:
        done = [{**row, key: str(paths[i])} for i, row in enumerate(rows) if paths[i].is_file()]
        write_jsonl(out_jsonl, done)
        stats["rows_out"] = len(done)
    return stats


def video_frames_for_latents(path: Path, num_frames: int, fps: float, buckets: Sequence[tuple[int, int]],
                             is_image: bool) -> torch.Tensor:
    """(3, 1 + 8k, H, W) in [-1, 1]: frames from the start at ``fps``, as many as fit up to ``num_frames``."""
    info = probe_media(path)
    if is_image:
        indices = [0]
    else:
        stride = max(info.fps / fps, 1.0)
        available = int((info.num_frames - 1) / stride) + 1
        count = 1 + 8 * ((min(available, num_frames) - 1) // 8)
        indices = [int(i * stride) for i in range(count)]
    w, h = nearest_bucket(info.width, info.height, buckets)
    return resize_center_crop(decode_frames(path, indices), w, h)


def extract_latents(vae, anno_file: str | Path, out_dir: str | Path, out_jsonl: str | Path,
                    buckets: Sequence[tuple[int, int]], num_frames: int, fps: float, data_root: str | Path = "",
                    info: DistInfo = DistInfo(), seed: int = 0, sample: bool = True,
                    chunk_size: int | None = None, tile_size: int | None = None) -> Counter:
    """Encode every ``video``/``image`` row to raw VAE latents; returns counts (encoded, existing, skipped)."""
    rows, out_dir, stats = read_jsonl(anno_file), Path(out_dir), Counter()
    paths = {i: _output_path(r, "latent", out_dir, i, "-latent", data_root) for i, r in enumerate(rows)}
    device = next(vae.parameters()).device
    for i, row in _shard(rows, info):
        if paths[i].is_file():
            stats["existing"] += 1
            continue
        key = "video" if "video" in row else "image" if "image" in row else None
        try:
            if key is None:
                raise KeyError("row has no 'video' or 'image'")
            pixels = video_frames_for_latents(resolve(row[key], data_root), num_frames, fps, buckets, key == "image")
            # per row, on the CPU: the same latents on any rank count, device and machine
            generator = torch.Generator().manual_seed(seed + i)
            with torch.no_grad():
                posterior = vae.encode(pixels[None].to(device), chunk_size=chunk_size, tile_size=tile_size)
                latents = posterior.sample(generator) if sample else posterior.mode()
        except Exception as err:  # a bad row is counted, not fatal
            log.warning("latents for row %d (%s) skipped: %s", i, row.get(key), err)
            stats["skipped"] += 1
            continue
        atomic_torch_save(latents.float().cpu().contiguous(), paths[i])
        stats["encoded"] += 1
    return _finish(rows, "latent", paths, Path(out_jsonl), info, stats)


def extract_text_features(encode: Callable[[list[str]], Any], anno_file: str | Path, out_dir: str | Path,
                          out_jsonl: str | Path, data_root: str | Path = "", info: DistInfo = DistInfo(),
                          batch_size: int = 8) -> Counter:
    """Encode every row's ``text`` with ``encode`` (e.g. ``PyramidTextEncoder.encode_prompt``).

    ``encode`` maps a list of prompts to ``(prompt_embeds, attention_mask, pooled)`` batches.
    """
    rows, out_dir, stats = read_jsonl(anno_file), Path(out_dir), Counter()
    paths = {i: _output_path(r, "text_fea", out_dir, i, "-text", data_root) for i, r in enumerate(rows)}
    todo = []
    for i, row in _shard(rows, info):
        if paths[i].is_file():
            stats["existing"] += 1
        elif not isinstance(row.get("text"), str):
            log.warning("text features for row %d skipped: caption is %r, not a string", i, row.get("text"))
            stats["skipped"] += 1
        else:
            todo.append(i)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        embeds, mask, pooled = encode([rows[i]["text"] for i in chunk])
        for j, i in enumerate(chunk):
            atomic_torch_save({"prompt_embed": embeds[j:j + 1].float().cpu().clone(),
                               "prompt_attention_mask": mask[j:j + 1].cpu().clone(),
                               "pooled_prompt_embed": pooled[j:j + 1].float().cpu().clone()}, paths[i])
            stats["encoded"] += 1
    return _finish(rows, "text_fea", paths, Path(out_jsonl), info, stats)
