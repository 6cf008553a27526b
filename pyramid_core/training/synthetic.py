"""A synthetic moving-shapes dataset for tests and demos: mp4 videos, png images, one JSONL.

Every clip is a few coloured circles and squares bouncing over a flat background; the caption
names them. Everything is drawn with numpy from one seed, so the same seed gives the same
frames (the encoded files differ only as the codec does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import write_jsonl

COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
    "white": (240, 240, 240), "purple": (150, 60, 190), "orange": (240, 140, 30), "cyan": (40, 200, 210),
}
BACKGROUNDS = {"black": (10, 10, 10), "gray": (110, 110, 110), "navy": (20, 30, 70), "beige": (200, 190, 160)}
KINDS = ("circle", "square")


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    radius: float        # pixels (half the side of a square)
    x: float             # centre at frame 0, pixels
    y: float
    vx: float            # pixels per frame
    vy: float


def random_scene(rng: np.random.Generator, width: int, height: int, max_shapes: int = 2) -> tuple[str, list[Shape]]:
    """A background name and 1..max_shapes shapes with positions and velocities."""
    background = str(rng.choice(list(BACKGROUNDS)))
    shapes = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        radius = float(rng.uniform(0.1, 0.22) * min(width, height))
        speed = float(rng.uniform(0.02, 0.05) * min(width, height))
        angle = float(rng.uniform(0, 2 * np.pi))
        shapes.append(Shape(
            kind=str(rng.choice(KINDS)), color=str(rng.choice(list(COLORS))), radius=radius,
            x=float(rng.uniform(radius, width - radius)), y=float(rng.uniform(radius, height - radius)),
            vx=speed * np.cos(angle), vy=speed * np.sin(angle),
        ))
    return background, shapes


def _bounce(start: float, velocity: float, t: int, low: float, high: float) -> float:
    """Position after t frames moving between low and high with reflections."""
    span = high - low
    if span <= 0:
        return low
    p = (start - low + velocity * t) % (2 * span)
    return low + (p if p <= span else 2 * span - p)


def render(background: str, shapes: list[Shape], width: int, height: int, num_frames: int) -> np.ndarray:
    """uint8 frames (T, H, W, 3)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[:] = BACKGROUNDS[background]
        for s in shapes:
            cx = _bounce(s.x, s.vx, t, s.radius, width - s.radius)
            cy = _bounce(s.y, s.vy, t, s.radius, height - s.radius)
            if s.kind == "circle":
                mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= s.radius ** 2
            else:
                mask = (np.abs(xs - cx) <= s.radius) & (np.abs(ys - cy) <= s.radius)
            frame[mask] = COLORS[s.color]
        frames[t] = frame
    return frames


def caption(background: str, shapes: list[Shape], moving: bool = True) -> str:
    names = " and ".join(f"{'an' if s.color[0] in 'aeiou' else 'a'} {s.color} {s.kind}" for s in shapes)
    return f"{names} {'moving' if moving else 'resting'} on a {background} background"


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Frames (T, H, W, 3) uint8 -> an H.264 mp4 (MPEG-4 part 2 if x264 is missing)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast"} if codec == "libx264" else {"qscale": "2"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_image(path: Path, image: np.ndarray) -> None:
    """(H, W, 3) uint8 -> png."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height = image.shape[1], image.shape[0]
        stream.pix_fmt = "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_moving_shapes(out_dir: str | Path, num_videos: int = 8, num_images: int = 0, width: int = 64,
                       height: int = 64, num_frames: int = 17, fps: int = 24, seed: int = 0,
                       image_sizes: list[tuple[int, int]] | None = None,
                       anno_name: str = "annotations.jsonl") -> Path:
    """Write ``num_videos`` mp4s and ``num_images`` pngs under ``out_dir`` plus a JSONL; returns its path.

    Rows are ``{"video": "videos/00000.mp4", "text": ...}`` and ``{"image": ..., "text": ...}`` with
    paths relative to ``out_dir`` (use it as the data root). Images take their sizes from
    ``image_sizes`` in turn (default: the video size), which exercises aspect-ratio buckets.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_videos):
        background, shapes = random_scene(rng, width, height)
        rel = f"videos/{i:05d}.mp4"
        write_video(out_dir / rel, render(background, shapes, width, height, num_frames), fps)
        rows.append({"video": rel, "text": caption(background, shapes)})
    sizes = image_sizes or [(width, height)]
    for i in range(num_images):
        w, h = sizes[i % len(sizes)]
        background, shapes = random_scene(rng, w, h)
        rel = f"images/{i:05d}.png"
        write_image(out_dir / rel, render(background, shapes, w, h, 1)[0])
        rows.append({"image": rel, "text": caption(background, shapes, moving=False)})
    anno = out_dir / anno_name
    write_jsonl(anno, rows)
    return anno
