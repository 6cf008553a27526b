"""Scenes of the toy world: one shape of one colour moving in one direction over a background.

Every clip is 128x128 px, 17 frames at 24 fps (3 latent frames of 16x16: the first frame and
two video units). A scene is drawn with numpy from its parameters, anti-aliased by 4x4
supersampling so the edges a VAE must learn are the same at every sub-pixel position. Its
caption names all four choices: ``"a red square moves right on a black background"``.

Some (colour, shape, direction) combinations are held out of training (:data:`HELD_OUT`), so a
test can ask for a video the model has never seen and judge whether it composes the words.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

# 128 px, not 64: the pyramid's first stage works at a quarter of the latent size, and at 64 px
# that is a 2x2 latent (one DiT token) in which the shape is a faint tint of the whole frame.
# Trained on the same scenes (image-only DiT, 3000 steps, 48 prompts), a 64 px world gave the
# prompted colour 20/48 and shape 8/48; at 128 px (stage 0 = 2x2 tokens) 30/48 and 15/48.
WIDTH = HEIGHT = 128
VAE_CROP = 64                  # px: the VAE trains on windows of this size (busy_scene), at a quarter of the cost
FRAMES = 17
FPS = 24

# Palette: shape colours far apart in RGB and far from every background, so a pixel's
# nearest palette entry (judge.classify_pixels) names its colour even through VAE blur.
COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 230), "yellow": (235, 205, 40)}
BACKGROUNDS = {"black": ((12, 12, 12),), "gray": ((128, 128, 128),),
               "striped": ((30, 30, 30), (90, 90, 90))}      # horizontal stripes, STRIPE px each
STRIPE = 8
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # image axes
# Shapes 56-64 px across: half the frame, 7-8 latent pixels (4 DiT tokens at the top stage, 2 at
# the middle one), so that the shape is resolved where the pyramid decides it and is a large part
# of what the DiT's loss sees. Measured on the same scenes with an image-only DiT (1500 steps, 48
# prompts): 40-52 px shapes gave the prompted colour 32/48, these 42/48; the toy VAE's
# reconstructions of 32 clips kept the outline (image-to-video check) 25/32 and 30/32. (Before
# that, 28-36 px shapes gave 30/48 and 40-52 px 35/48 with another DiT.)
SIZE_RANGE = (28.0, 32.0)      # half-width of the shape in px
# The VAE's training windows (busy_scene) keep the 40-52 px shapes they had, so that its data and
# the trained VAE stay the same: a convolutional codec encodes the same edges on a shape of any
# size (its reconstructions of the bigger shapes keep the outline more often, as above).
VAE_SIZE_RANGE = (20.0, 26.0)
SPEED_RANGE = (2.5, 3.5)       # px per frame: 40-56 px over a clip, room for the whole path
SUPERSAMPLE = 4

# (colour, shape, direction) never shown in training; every word still appears in others.
HELD_OUT = frozenset({("red", "triangle", "left"), ("green", "circle", "up"), ("blue", "square", "down"),
                      ("yellow", "triangle", "right"), ("red", "circle", "down"), ("green", "square", "left")})


@dataclass(frozen=True)
class Scene:
    """One clip: ``x, y`` is the shape's centre at frame 0 in px, ``speed`` px per frame."""

    color: str
    shape: str
    direction: str
    background: str
    size: float
    x: float
    y: float
    speed: float

    @property
    def caption(self) -> str:
        return caption(self.color, self.shape, self.direction, self.background)

    def center(self, frame: int) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        return self.x + dx * self.speed * frame, self.y + dy * self.speed * frame


def caption(color: str, shape: str, direction: str, background: str) -> str:
    return f"a {color} {shape} moves {direction} on a {background} background"


def vocabulary() -> list[str]:
    """Every word a caption of this world uses (the toy text encoders' vocabulary)."""
    words = {"a", "moves", "on", "background"} | set(COLORS) | set(SHAPES) | set(DIRECTIONS) | set(BACKGROUNDS)
    return sorted(words)


def combinations(held_out: bool | None = None) -> list[tuple[str, str, str]]:
    """(colour, shape, direction) triples: all (None), the training ones (False) or the held-out ones (True)."""
    every = list(itertools.product(COLORS, SHAPES, DIRECTIONS))
    return every if held_out is None else [c for c in every if (c in HELD_OUT) == held_out]


def random_scene(rng: np.random.Generator, color: str, shape: str, direction: str,
                 background: str | None = None, frames: int = FRAMES,
                 size_range: tuple[float, float] = SIZE_RANGE) -> Scene:
    """A scene with the given words whose shape (half-width drawn from ``size_range``) stays
    wholly inside the frame for ``frames`` frames."""
    background = background or str(rng.choice(list(BACKGROUNDS)))
    size = float(rng.uniform(*size_range))
    speed = float(rng.uniform(*SPEED_RANGE))
    travel = speed * (frames - 1)
    margin = size + 2.0
    dx, dy = DIRECTIONS[direction]

    def start(step: float, extent: int) -> float:
        if step == 0:                                     # the axis it does not move along
            return float(rng.uniform(margin, extent - margin))
        low, high = margin, extent - margin - travel      # room for the whole path
        position = float(rng.uniform(low, max(low, high)))
        return position if step > 0 else extent - position

    return Scene(color, shape, direction, background, size, start(dx, WIDTH), start(dy, HEIGHT), speed)


def busy_scene(rng: np.random.Generator, count: int, frames: int = FRAMES, width: int = VAE_CROP,
               height: int = VAE_CROP) -> list[Scene]:
    """``count`` shapes of random colours, kinds, directions and speeds over one background, each
    starting anywhere in a ``width`` x ``height`` window (they may overlap and leave it): the
    VAE's training clips, with shapes of :data:`VAE_SIZE_RANGE` in a window the VAE is cheap on (a
    convolutional codec trained on windows encodes whole frames of the same scale). A codec
    learns what it sees often; with one small shape per clip it first learns the background and
    takes thousands of steps to notice the shape, with several it learns colours and edges at once."""
    background = str(rng.choice(list(BACKGROUNDS)))
    scenes = []
    for _ in range(count):
        color, shape, direction = (str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)),
                                   str(rng.choice(list(DIRECTIONS))))
        scene = random_scene(rng, color, shape, direction, background, frames, VAE_SIZE_RANGE)
        x, y = (float(v) for v in rng.uniform(0, (width, height)))
        scenes.append(Scene(color, shape, direction, background, scene.size, x, y, scene.speed))
    return scenes


def _background(name: str, width: int, height: int) -> np.ndarray:
    colors = np.asarray(BACKGROUNDS[name], dtype=np.float32)
    rows = (np.arange(height) // STRIPE) % len(colors)
    return np.broadcast_to(colors[rows][:, None, :], (height, width, 3)).copy()


def shape_coverage(shape: str, cx: float, cy: float, size: float, width: int = WIDTH, height: int = HEIGHT,
                   supersample: int = SUPERSAMPLE) -> np.ndarray:
    """(height, width) float32 in [0, 1]: the fraction of each pixel the shape covers.

    A square has half-side ``size``, a circle radius ``size``; a triangle points up, with base
    ``2 * size`` and height ``2 * size`` centred on (cx, cy).
    """
    offsets = (np.arange(supersample, dtype=np.float32) + 0.5) / supersample
    ys = (np.arange(height, dtype=np.float32)[:, None] + offsets[None, :]).reshape(-1)[:, None]
    xs = (np.arange(width, dtype=np.float32)[:, None] + offsets[None, :]).reshape(-1)[None, :]
    u, v = xs - cx, ys - cy
    if shape == "square":
        inside = (np.abs(u) <= size) & (np.abs(v) <= size)
    elif shape == "circle":
        inside = u ** 2 + v ** 2 <= size ** 2
    elif shape == "triangle":
        # apex at v = -size, base at v = +size; half-width grows linearly from 0 to size
        inside = (np.abs(v) <= size) & (np.abs(u) <= (v + size) / 2)
    else:
        raise ValueError(f"shape {shape!r}: choose one of {list(SHAPES)}")
    return inside.reshape(height, supersample, width, supersample).mean(axis=(1, 3), dtype=np.float32)


def render(scene: Scene | list[Scene], frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """uint8 frames (frames, height, width, 3) of ``scene`` (or of several over the first one's
    background, later ones in front)."""
    scenes = scene if isinstance(scene, list) else [scene]
    background = _background(scenes[0].background, width, height)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        frame = background
        for s in scenes:
            cover = shape_coverage(s.shape, *s.center(t), s.size, width, height)[..., None]
            frame = frame * (1 - cover) + np.asarray(COLORS[s.color], dtype=np.float32) * cover
        out[t] = np.rint(frame).astype(np.uint8)
    return out
