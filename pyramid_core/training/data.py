"""Training data: JSONL annotations, video/image decoding, aspect-ratio buckets, batches.

Annotation rows use the reference's shape, one JSON object per line::

    {"video": "clips/a.mp4", "text": "a dog runs", "latent": "lat/a.pt", "text_fea": "txt/a.pt"}
    {"image": "imgs/b.jpg", "text": "a red house"}

``latent`` (a tensor (1, 16, T, h, w) saved by ``features.extract_latents``) and ``text_fea``
(a dict ``prompt_embed``/``prompt_attention_mask``/``pooled_prompt_embed``) are optional and
only read by :class:`LatentDataset`. Relative paths are resolved against a data root.

Bad rows never crash a run. Rows that are broken on disk (missing or undecodable media, a
caption that is not a string, a latent of the wrong shape) are dropped when the dataset is
scanned; a sample that still fails to load later is replaced by the next good row of the
same bucket. Both are logged once per row and counted in ``dataset.skipped``.

Batches come from :class:`BucketBatchSampler`: deterministic from a seed, grouped so that
every sample of a batch has the same (frames, height, width), split over ranks, and able to
start at any batch number, which is what exact resume needs.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("pyramid_core.training")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


# --------------------------------------------------------------------------------------
# annotations
# --------------------------------------------------------------------------------------

def read_jsonl(path: str | Path, skipped: Counter | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL file; lines that are not JSON objects are logged, counted and dropped."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            row = None
            reason = f"not JSON ({err.msg})"
        else:
            reason = "not a JSON object"
        if not isinstance(row, dict):
            log.warning("%s:%d skipped: %s", path, lineno, reason)
            if skipped is not None:
                skipped["bad_json"] += 1
            continue
        rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)


def resolve(path: str, root: str | Path = "") -> Path:
    p = Path(path)
    return p if p.is_absolute() or not root else Path(root) / p


# --------------------------------------------------------------------------------------
# decoding (PyAV)
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MediaInfo:
    width: int
    height: int
    num_frames: int      # decodable frames (1 for an image)
    fps: float


def probe_media(path: Path) -> MediaInfo:
    """Size, frame count and rate from the container header; raises on unreadable files."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return MediaInfo(width, height, 1, 1.0)
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = stream.frames
        if not frames and stream.duration is not None and fps:
            frames = int(stream.duration * stream.time_base * fps)
    if not width or not height or not frames or not fps:
        raise ValueError("no decodable video stream")
    return MediaInfo(width, height, int(frames), fps)


def decode_frames(path: Path, indices: Sequence[int]) -> torch.Tensor:
    """Frames ``indices`` (ascending, repeats allowed) -> uint8 (T, H, W, 3)."""
    import av

    wanted = sorted(set(indices))
    found: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")
            if i >= wanted[-1]:
                break
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ValueError(f"video ends before frame {missing[0]}")
    return torch.from_numpy(np.stack([found[i] for i in indices]))


def frame_indices(source_frames: int, source_fps: float, target_fps: float, num_frames: int,
                  rng: random.Random) -> list[int] | None:
    """``num_frames`` source indices sampled at ``target_fps`` from a random start, or None if too short.

    Sources slower than the target are read frame by frame (never duplicated), as the reference does.
    """
    stride = max(source_fps / target_fps, 1.0)
    span = (num_frames - 1) * stride
    if math.floor(span) + 1 > source_frames:
        return None
    start = rng.uniform(0.0, source_frames - 1 - span)
    return [int(start + i * stride) for i in range(num_frames)]


def resize_center_crop(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, height, width) in [-1, 1]: cover-resize, then centre crop."""
    video = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0                     # (T, 3, H, W)
    h, w = video.shape[-2:]
    scale = max(width / w, height / h)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    if size != (h, w):
        video = F.interpolate(video, size=size, mode="bicubic", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    video = video[:, :, top:top + height, left:left + width].clamp(-1.0, 1.0)
    return video.permute(1, 0, 2, 3).contiguous()                                  # (3, T, h, w)


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (w, h) bucket whose aspect ratio is closest to the source's (in log ratio)."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - ratio))


# --------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------

class _ScannedDataset(torch.utils.data.Dataset):
    """Shared scanning and replacement logic; subclasses define ``_scan_row`` and ``_load``."""

    def __init__(self, anno_files: Sequence[str | Path], data_root: str | Path = "") -> None:
        self.data_root = data_root
        self.skipped: Counter = Counter()
        self.entries: list[dict[str, Any]] = []
        for anno in anno_files:
            for row in read_jsonl(anno, self.skipped):
                try:
                    entry = self._scan_row(row)
                except Exception as err:  # any broken row is skipped, never fatal
                    self._skip(row, "scan", err)
                    continue
                if entry is not None:
                    self.entries.append(entry)
        if self.skipped:
            log.warning("%s: %d rows kept, skipped %s", type(self).__name__, len(self.entries), dict(self.skipped))
        if not self.entries:
            raise ValueError(f"no usable rows in {list(map(str, anno_files))} (skipped: {dict(self.skipped)})")
        self._by_bucket: dict[tuple, list[int]] = {}
        self._bucket_pos: list[int] = []
        for i, e in enumerate(self.entries):
            e["index"] = i
            same = self._by_bucket.setdefault(e["bucket"], [])
            self._bucket_pos.append(len(same))
            same.append(i)

    @property
    def bucket_keys(self) -> list[tuple]:
        return [e["bucket"] for e in self.entries]

    def _skip(self, row: dict, reason: str, err: Exception | str) -> None:
        self.skipped[reason] += 1
        name = row.get("video") or row.get("image") or row.get("latent") or row
        log.warning("skipped %s (%s): %s", name, reason, err)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        """``key`` = (index, sample seed) from :class:`BucketBatchSampler`."""
        index, seed = key
        bucket = self.entries[index]["bucket"]
        same, pos = self._by_bucket[bucket], self._bucket_pos[index]
        for attempt in range(len(same)):
            candidate = same[(pos + attempt) % len(same)]
            try:
                sample = self._load(self.entries[candidate], random.Random(seed))
            except Exception as err:  # replaced by the next row of the same bucket
                self._skip(self.entries[candidate]["row"], "load", err)
                continue
            sample["skipped"] = attempt
            return sample
        raise RuntimeError(f"every row of bucket {bucket} failed to load")

    def _caption(self, row: dict) -> str:
        text = row.get("text", "")
        if not isinstance(text, str):
            raise TypeError(f"caption must be a string, got {type(text).__name__}")
        return text


class PixelDataset(_ScannedDataset):
    """Frames for VAE training and latent extraction: ``video`` and ``image`` rows.

    A video sample is ``num_frames`` frames at ``fps`` from a random start, an image sample one
    frame; both cover-resized and centre-cropped to their aspect-ratio bucket. Samples are dicts
    ``pixels`` (3, T, H, W) in [-1, 1], ``text``, ``index``.
    """

    def __init__(self, anno_files, buckets: Sequence[tuple[int, int]], num_frames: int, fps: float,
                 data_root: str | Path = "", use_images: bool = True) -> None:
        self.buckets = [tuple(b) for b in buckets]
        self.num_frames = num_frames
        self.fps = fps
        self.use_images = use_images
        super().__init__(anno_files, data_root)

    def _scan_row(self, row: dict) -> dict | None:
        key = "video" if "video" in row else "image" if "image" in row else None
        if key is None or (key == "image" and not self.use_images):
            self._skip(row, "no_media", "row has no usable 'video'/'image' key")
            return None
        text = self._caption(row)
        path = resolve(row[key], self.data_root)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        info = probe_media(path)
        frames = 1 if key == "image" else self.num_frames
        if key == "video" and frame_indices(info.num_frames, info.fps, self.fps, frames, random.Random(0)) is None:
            self._skip(row, "too_short", f"{info.num_frames} frames at {info.fps:g} fps < {frames} at {self.fps:g}")
            return None
        w, h = nearest_bucket(info.width, info.height, self.buckets)
        return {"row": row, "path": path, "text": text, "info": info, "bucket": (frames, h, w)}

    def _load(self, entry: dict, rng: random.Random) -> dict[str, Any]:
        frames, h, w = entry["bucket"]
        info = entry["info"]
        indices = [0] if frames == 1 else frame_indices(info.num_frames, info.fps, self.fps, frames, rng)
        pixels = resize_center_crop(decode_frames(entry["path"], indices), w, h)
        return {"pixels": pixels, "text": entry["text"], "index": entry["index"]}


def _load_tensor_file(path: Path) -> Any:
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)


class LatentDataset(_ScannedDataset):
    """Pre-extracted latents and text features (rows with ``latent`` and ``text_fea``).

    Latent files hold (1, C, T, h, w) or (C, T, h, w); rows whose latent has another channel
    count, fewer than ``min_frames`` frames, or whose text features lack a key are skipped.
    Samples: ``latent`` (C, min(T, max_frames), h, w) float32, ``prompt_embed``,
    ``prompt_attention_mask``, ``pooled_prompt_embed``, ``text``.
    """

    TEXT_KEYS = ("prompt_embed", "prompt_attention_mask", "pooled_prompt_embed")

    def __init__(self, anno_files, max_frames: int, channels: int = 16, min_frames: int = 1,
                 data_root: str | Path = "", load_text_features: bool = True) -> None:
        self.max_frames, self.channels, self.min_frames = max_frames, channels, min_frames
        self.load_text_features = load_text_features
        super().__init__(anno_files, data_root)

    def _scan_row(self, row: dict) -> dict:
        text = self._caption(row)
        latent_path = resolve(row["latent"], self.data_root)
        latent = _load_tensor_file(latent_path)
        shape = self._check_latent(latent)
        text_path = None
        if self.load_text_features:
            text_path = resolve(row["text_fea"], self.data_root)
            if not text_path.is_file():
                raise FileNotFoundError(f"{text_path} does not exist")
        frames = min(shape[1], self.max_frames)
        return {"row": row, "latent": latent_path, "text_fea": text_path, "text": text,
                "bucket": (frames, shape[2], shape[3])}

    def _check_latent(self, latent: Any) -> tuple[int, ...]:
        if not isinstance(latent, torch.Tensor):
            raise TypeError("latent file must hold one tensor")
        shape = tuple(latent.shape[1:]) if latent.ndim == 5 and latent.shape[0] == 1 else tuple(latent.shape)
        if len(shape) != 4 or shape[0] != self.channels or shape[1] < self.min_frames:
            raise ValueError(f"latent of shape {tuple(latent.shape)}: expected (1, {self.channels}, T, h, w) "
                             f"with T >= {self.min_frames}")
        return shape

    def _load(self, entry: dict, rng: random.Random) -> dict[str, Any]:
        frames = entry["bucket"][0]
        latent = _load_tensor_file(entry["latent"])
        self._check_latent(latent)
        latent = latent.reshape(latent.shape[-4:])[:, :frames].float().clone()
        sample = {"latent": latent, "text": entry["text"]}
        if self.load_text_features:
            features = _load_tensor_file(entry["text_fea"])
            if not isinstance(features, dict) or any(k not in features for k in self.TEXT_KEYS):
                raise ValueError(f"text features must hold {self.TEXT_KEYS}")
            # files hold a leading batch dim of 1 (the reference's layout); samples drop it
            sample.update({k: (features[k][0] if features[k].ndim > 1 and features[k].shape[0] == 1
                               else features[k]).clone() for k in self.TEXT_KEYS})
        return sample


# --------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------

class BucketBatchSampler(torch.utils.data.Sampler):
    """Endless, seeded batches of same-bucket samples, split over ranks, startable at any batch.

    Each epoch shuffles all rows with ``seed + epoch`` and fills one queue per bucket; a full
    queue becomes a global batch of ``batch_size``; rank ``r`` gets items ``r::world_size`` of
    it. So a run with N ranks sees the same global batches as one process, and batch number
    ``start_batch`` is reached by replaying the (cheap) index arithmetic, no data read.
    Items are (row index, sample seed); the seed drives per-sample choices such as the start frame.
    """

    def __init__(self, bucket_keys: Sequence[tuple], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by the {world_size} ranks")
        counts = Counter(bucket_keys)
        if max(counts.values()) < batch_size:
            raise ValueError(f"no bucket holds batch_size={batch_size} samples (bucket sizes: {dict(counts)}); "
                             "lower batch_size or merge buckets")
        self.bucket_keys = list(bucket_keys)
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.start_batch = start_batch

    def global_batches(self) -> Iterator[list[tuple[int, int]]]:
        epoch = 0
        while True:
            rng = random.Random(self.seed * 1_000_003 + epoch)
            order = list(range(len(self.bucket_keys)))
            rng.shuffle(order)
            queues: dict[tuple, list[int]] = {}
            for index in order:
                queue = queues.setdefault(self.bucket_keys[index], [])
                queue.append(index)
                if len(queue) == self.batch_size:
                    yield [(i, rng.getrandbits(62)) for i in queue]
                    queue.clear()
            epoch += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for number, batch in enumerate(self.global_batches()):
            if number >= self.start_batch:
                yield batch[self.rank::self.world_size]


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, list everything else; ``skipped`` becomes the batch's total."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "skipped":
            out[key] = sum(values)
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1, start_batch: int = 0, num_workers: int = 0) -> Iterator[dict[str, Any]]:
    """An endless iterator of this rank's share of each global batch, starting at ``start_batch``."""
    sampler = BucketBatchSampler(dataset.bucket_keys, batch_size, seed, rank, world_size, start_batch)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                         collate_fn=collate, persistent_workers=num_workers > 0,
                                         # its own generator: worker seeds never draw from the global RNG
                                         generator=torch.Generator().manual_seed(seed))
    return iter(loader)
