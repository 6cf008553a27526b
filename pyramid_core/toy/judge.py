"""Judge a video of the toy world from its pixels: which colour dominates, where that object is
in every frame, which shape it has, and whether it moved the way the prompt said.

Everything is plain numpy on uint8 frames ``(T, H, W, 3)``, so a test reads the same numbers
from a video decoded by ``pyramid_core``, by ComfyUI or from an mp4.

* **Colour mask.** Each pixel takes the nearest colour among the palette and the background
  colours (Euclidean RGB distance); it belongs to palette colour ``c`` when that is the nearest
  and lies within :data:`MAX_COLOR_DISTANCE` of it. Grey noise, as random weights give, is near
  no palette colour, so its masks stay (almost) empty.
* **Dominant object.** The palette colour with the most masked pixels over the clip; its mask
  in each frame gives the object's area and centroid (x, y in pixels, image axes: y down).
* **Shape.** The world's shape whose silhouette, of the mask's area and centred on its
  centroid, overlaps the mask most (:func:`classify_shape`): a nearest-template reading that
  a ragged edge or a few stray pixels move little.
* **Motion.** Displacement = mean centroid of the last :data:`END_FRAMES` frames minus that of
  the first :data:`END_FRAMES` (robust to one bad frame). It must go the prompted way by at
  least ``min_shift`` px and at most half as far across.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from .world import BACKGROUNDS, COLORS, DIRECTIONS, shape_coverage

MAX_COLOR_DISTANCE = 100.0    # RGB units; palette colours are >= 150 apart, backgrounds >= 100 from any
MIN_PIXELS = 80               # an object smaller than this in a frame is absent (a 128 px frame, shapes ~1600-4100 px)
END_FRAMES = 3                # frames averaged at each end of a clip to measure displacement
# Area of each shape of world.shape_coverage per size**2: a square of half-side s, a circle of
# radius s, an upward triangle of base and height 2s (classify_shape sizes its templates by it).
SHAPE_AREA = {"square": 4.0, "circle": math.pi, "triangle": 2.0}

_PALETTE = list(COLORS)
_REFERENCE = np.asarray([COLORS[c] for c in _PALETTE]
                        + [rgb for colours in BACKGROUNDS.values() for rgb in colours], dtype=np.float32)


def color_labels(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> int (T, H, W): palette index of each pixel's colour, -1 for none."""
    pixels = np.asarray(frames, dtype=np.float32)[..., None, :]
    distance = np.sqrt(((pixels - _REFERENCE) ** 2).sum(-1))           # (T, H, W, palette + backgrounds)
    nearest = distance.argmin(-1)
    close = np.take_along_axis(distance, nearest[..., None], -1)[..., 0] <= MAX_COLOR_DISTANCE
    return np.where(close & (nearest < len(_PALETTE)), nearest, -1)


def classify_shape(mask: np.ndarray) -> str | None:
    """Bool (H, W) -> "square", "circle" or "triangle"; None below MIN_PIXELS.

    Each shape of the world is drawn with the mask's area and compared with the mask centroid
    on centroid (:func:`silhouette_iou`); the best match names it. Not a bounding box's fill,
    as before: one stray pixel or one bump on a generated shape's edge grows its bounding box,
    so clearly drawn squares read as circles. Both read every rendered clip right; on the toy
    model's frames they differ (see the toy model card).
    """
    area = int(mask.sum())
    if area < MIN_PIXELS:
        return None
    # Pad the frame by a template's reach from its centroid (4/3 of a triangle's half-size,
    # the longest), so that a shape at the border is not matched against a template the
    # border cuts off.
    pad = math.ceil(4 / 3 * math.sqrt(area / min(SHAPE_AREA.values()))) + 2
    canvas = np.pad(mask, pad)
    ys, xs = np.nonzero(canvas)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    height, width = canvas.shape
    overlap = {name: silhouette_iou(canvas, shape_coverage(name, cx, cy, math.sqrt(area / per_size2),
                                                             width, height, supersample=1) >= 0.5)
               for name, per_size2 in SHAPE_AREA.items()}
    return max(overlap, key=overlap.get)


@dataclass
class Reading:
    """What the pixels of one clip show (see the module doc).

    ``areas`` (T,) pixels of the dominant colour per frame; ``centroids`` (T, 2) x, y in px
    (NaN where the object is absent); ``shapes`` one name (or None) per frame.
    """

    color: str | None
    areas: np.ndarray
    centroids: np.ndarray
    shapes: list[str | None] = field(default_factory=list)

    @property
    def present(self) -> np.ndarray:
        return self.areas >= MIN_PIXELS

    def displacement(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(dx, dy) between the first and the last END_FRAMES frames of ``[start, stop)``; NaN if absent there."""
        path = self.centroids[start:stop]
        n = min(END_FRAMES, max(1, len(path) // 2))
        if len(path) < 2:
            return np.full(2, np.nan)
        with warnings.catch_warnings():          # an end with no object gives NaN, which fails the checks
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(path[-n:], axis=0) - np.nanmean(path[:n], axis=0)

    def velocity(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(vx, vy) px per frame over ``[start, stop)``: a least-squares line through the centroids."""
        path = self.centroids[start:stop]
        t = np.arange(len(path), dtype=np.float64)
        ok = ~np.isnan(path[:, 0])
        if ok.sum() < 2:
            return np.full(2, np.nan)
        return np.array([np.polyfit(t[ok], path[ok, axis], 1)[0] for axis in (0, 1)])


def read_video(frames: np.ndarray) -> Reading:
    """uint8 frames (T, H, W, 3) -> a :class:`Reading` of the dominant object."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    labels = color_labels(frames)
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(_PALETTE))
    if counts.sum() == 0:
        t = len(frames)
        return Reading(None, np.zeros(t), np.full((t, 2), np.nan), [None] * t)
    index = int(counts.argmax())
    masks = labels == index
    areas = masks.sum(axis=(1, 2)).astype(np.float64)
    ys, xs = np.mgrid[0:frames.shape[1], 0:frames.shape[2]].astype(np.float64) + 0.5
    centroids = np.full((len(frames), 2), np.nan)
    for t, mask in enumerate(masks):
        if areas[t] >= MIN_PIXELS:
            centroids[t] = (xs[mask].mean(), ys[mask].mean())
    return Reading(_PALETTE[index], areas, centroids, [classify_shape(m) for m in masks])


@dataclass
class Verdict:
    """``ok`` and, when not, the reasons, plus the measured numbers for reports."""

    ok: bool
    reasons: list[str]
    measures: dict


def judge_motion(frames: np.ndarray, color: str, direction: str, min_shift: float = 24.0,
                 min_present: float = 0.9) -> Verdict:
    """Did the clip show a ``color`` object moving ``direction`` by at least ``min_shift`` px?

    Checks: the dominant colour is ``color``; the object is present in at least
    ``min_present`` of the frames; its displacement along ``direction`` is >= ``min_shift`` and
    its displacement across is at most half of that along.
    """
    reading = read_video(frames)
    shift = reading.displacement()
    dx, dy = DIRECTIONS[direction]
    along = float(shift[0] * dx + shift[1] * dy)
    across = float(abs(shift[1] * dx - shift[0] * dy))        # |2-D cross product|: the part across
    reasons = []
    if reading.color != color:
        reasons.append(f"dominant colour {reading.color}, asked for {color}")
    present = float(reading.present.mean())
    if present < min_present:
        reasons.append(f"object present in {present:.0%} of frames (< {min_present:.0%})")
    if not along >= min_shift:          # NaN fails too
        reasons.append(f"moved {along:.1f} px {direction} (< {min_shift})")
    elif across > along / 2:
        reasons.append(f"moved {across:.1f} px across the {direction} direction (> half of {along:.1f})")
    return Verdict(not reasons, reasons, {"color": reading.color, "present": round(present, 3),
                                          "along_px": round(along, 2), "across_px": round(across, 2),
                                          "shapes": reading.shapes, "shape": dominant_shape(reading)})


def silhouette_iou(mask: np.ndarray, reference: np.ndarray) -> float:
    """Intersection over union of two bool (H, W) masks after moving ``mask`` so that its
    centroid lies on ``reference``'s (whole pixels): how alike two silhouettes are wherever
    they are. Same shape and size: ~1; a circle in its square 0.79; a triangle in it 0.5. 0 if either is empty."""
    if mask.sum() < MIN_PIXELS or reference.sum() < MIN_PIXELS:
        return 0.0
    (ya, xa), (yb, xb) = (np.argwhere(m).mean(axis=0) for m in (mask, reference))
    dy, dx = int(round(yb - ya)), int(round(xb - xa))
    h, w = mask.shape
    moved = np.zeros_like(mask)
    moved[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return float((moved & reference).sum() / (moved | reference).sum())


def color_masks(frames: np.ndarray, color: str) -> np.ndarray:
    """uint8 (T, H, W, 3) or one (H, W, 3) frame -> bool (T, H, W): the pixels of palette ``color``
    (see :func:`color_labels`)."""
    frames = np.asarray(frames)
    return color_labels(frames if frames.ndim == 4 else frames[None]) == _PALETTE.index(color)


def dominant_shape(reading: Reading) -> str | None:
    """The shape most frames show (None if the object is never there)."""
    names = [s for s in reading.shapes if s is not None]
    return max(set(names), key=names.count) if names else None
