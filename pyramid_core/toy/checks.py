"""The toy model's behaviour checks: text-to-video, image-to-video and continuation, each judged
from the decoded pixels (:mod:`.judge`). The quality tests assert their success rates and
``benchmarks/toy_quality.py`` prints them against the sampling cost.

Every check returns a :class:`~.judge.Verdict`; :func:`success_rate` counts them. The
tolerances are module constants, stated once here for the tests and the benchmark alike.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from . import judge, world
from .model import ToyModel, ToySettings

MIN_SHIFT = 24.0           # px the object must travel the prompted way (clips travel 40-56 px)
FRAME0_MAX_DIFF = 16.0     # mean |frame 0 - image| in 0-255 units for image-to-video
FRAME0_MAX_OFFSET = 4.0    # px between the image's object centroid and frame 0's (shapes 56-64 px across)
SAME_SHAPE_IOU = 0.7       # silhouette IoU with the image's object (judge.silhouette_iou) that counts as the same shape
SAME_SHAPE = 0.8           # fraction of frames that must show the image's shape
SEAM = 1 + (world.FRAMES - 1) // 2   # continuation: the clip's first 9 frames are given, 8 are made
# Continuation: the centroid velocity after the seam must point within SEAM_MAX_TURN_DEG of the
# velocity before it and its speed must stay within a factor SEAM_SPEED_FACTOR of the speed
# before, so an object that stops, turns aside, reverses or races off fails (clips move
# 2.5-3.5 px/frame in one of four directions, 90 deg apart).
SEAM_MAX_TURN_DEG = 45.0
SEAM_SPEED_FACTOR = 3.0

# Prompts for text-to-video: every colour, shape, direction and background, half of them
# (colour, shape, direction) combinations that training never showed.
T2V_CASES = (
    ("red", "square", "right", "black"),
    ("blue", "circle", "left", "gray"),
    ("yellow", "square", "up", "striped"),
    ("green", "triangle", "down", "black"),
    ("red", "triangle", "left", "gray"),          # held out
    ("green", "circle", "up", "black"),           # held out
    ("blue", "square", "down", "striped"),        # held out
    ("yellow", "triangle", "right", "gray"),      # held out
)


def is_held_out(case: tuple[str, ...]) -> bool:
    return tuple(case[:3]) in world.HELD_OUT


def check_text_to_video(model: ToyModel, case: tuple[str, str, str, str], seed: int,
                        settings: ToySettings = ToySettings(), shape: bool = True) -> judge.Verdict:
    """The prompt of ``case`` (colour, shape, direction, background): the prompted colour, in the
    prompted shape, moves the prompted way (:func:`judge_text_to_video`; ``shape=False``:
    colour and motion only)."""
    color, shape_name, direction, background = case
    frames = model.text_to_video(world.caption(color, shape_name, direction, background), seed, settings)
    return judge_text_to_video(frames, color, shape_name, direction, shape)


def judge_text_to_video(frames: np.ndarray, color: str, shape: str, direction: str,
                        check_shape: bool = True) -> judge.Verdict:
    """Frames (T, H, W, 3) of a prompt ``color shape moves direction``: the prompted colour
    dominates, moves the prompted way (:func:`judge.judge_motion`, MIN_SHIFT px), and (unless
    not ``check_shape``) the shape most frames show (:func:`judge.dominant_shape`) is the
    prompted one."""
    verdict = judge.judge_motion(frames, color, direction, MIN_SHIFT)
    drawn = verdict.measures["shape"]
    if drawn == shape or not check_shape:
        return verdict
    return judge.Verdict(False, [*verdict.reasons, f"most frames show a {drawn}, asked for a {shape}"], verdict.measures)


def scene_for(seed: int, held_out: bool | None = None) -> world.Scene:
    """A seeded random scene (of a training, a held-out or any combination)."""
    rng = np.random.default_rng(10_000 + seed)
    combos = world.combinations(held_out)
    color, shape, direction = combos[int(rng.integers(len(combos)))]
    return world.random_scene(rng, color, shape, direction)


def check_image_to_video(model: ToyModel, scene: world.Scene, seed: int,
                         settings: ToySettings = ToySettings()) -> judge.Verdict:
    """From the scene's first frame and caption: frame 0 is that image (pixels and object
    position), the object keeps its colour and its shape (its silhouette, centred, overlaps the
    image's by SAME_SHAPE_IOU in SAME_SHAPE of the frames) and it moves the captioned way."""
    image = world.render(scene, frames=1)[0]
    return judge_image_to_video(model.image_to_video(image, scene.caption, seed, settings), image, scene)


def judge_image_to_video(frames: np.ndarray, image: np.ndarray, scene: world.Scene) -> judge.Verdict:
    """The judgement of :func:`check_image_to_video` on ``frames`` (T, H, W, 3) made from
    ``image`` (H, W, 3) and the caption of ``scene``, however they were made."""
    verdict = judge.judge_motion(frames, scene.color, scene.direction, MIN_SHIFT)
    reasons = list(verdict.reasons)
    diff = float(np.abs(frames[0].astype(np.float32) - image.astype(np.float32)).mean())
    if diff > FRAME0_MAX_DIFF:
        reasons.append(f"frame 0 differs from the image by {diff:.1f} on average (> {FRAME0_MAX_DIFF})")
    given, first = judge.read_video(image).centroids[0], judge.read_video(frames[:1]).centroids[0]
    offset = float(np.hypot(*(first - given)))
    if not offset <= FRAME0_MAX_OFFSET:
        reasons.append(f"frame 0's object is {offset:.1f} px from the image's (> {FRAME0_MAX_OFFSET})")
    reference = judge.color_masks(image, scene.color)[0]
    ious = [judge.silhouette_iou(mask, reference) for mask in judge.color_masks(frames, scene.color)]
    same = float(np.mean([iou >= SAME_SHAPE_IOU for iou in ious]))
    if same < SAME_SHAPE:
        reasons.append(f"{same:.0%} of frames keep the image's {scene.shape} (silhouette IoU >= {SAME_SHAPE_IOU}; "
                       f"< {SAME_SHAPE:.0%}): {np.round(ious, 2).tolist()}")
    measures = {**verdict.measures, "frame0_diff": round(diff, 2), "frame0_offset_px": round(offset, 2),
                "same_shape": round(same, 3)}
    return judge.Verdict(not reasons, reasons, measures)


def check_continuation(model: ToyModel, scene: world.Scene, seed: int,
                       settings: ToySettings = ToySettings()) -> judge.Verdict:
    """Continue the scene's first 9 frames to 17: the new frames keep the object's colour and its
    direction of motion (the centroid velocity of a line fit over frames 0-8 against one over
    frames 9-16: turned by at most SEAM_MAX_TURN_DEG, the speed within a factor SEAM_SPEED_FACTOR)."""
    clip = world.render(scene)
    return judge_continuation(model.continue_video(clip[:SEAM], scene.caption, seed, settings), scene)


def judge_continuation(frames: np.ndarray, scene: world.Scene, seam: int = SEAM) -> judge.Verdict:
    """The judgement of :func:`check_continuation` on ``frames`` (T, H, W, 3) whose first
    ``seam`` frames continue ``scene``'s clip, however they were made."""
    reading = judge.read_video(frames)
    after = judge.read_video(frames[seam:])
    before_v, after_v = reading.velocity(0, seam), reading.velocity(seam, None)
    before_speed, after_speed = float(np.hypot(*before_v)), float(np.hypot(*after_v))
    # The angle from atan2 of the cross and dot products: defined (0) for a zero vector, where
    # arccos of a normalised dot product would divide by zero.
    cross = float(before_v[0] * after_v[1] - before_v[1] * after_v[0])
    turn = float(np.degrees(np.arctan2(abs(cross), float(np.dot(before_v, after_v)))))
    reasons = []
    if after.color != scene.color:
        reasons.append(f"the continuation's dominant colour is {after.color}, the clip's {scene.color}")
    ratio = after_speed / before_speed if before_speed > 0 else float("nan")
    if not (turn <= SEAM_MAX_TURN_DEG and 1 / SEAM_SPEED_FACTOR <= ratio <= SEAM_SPEED_FACTOR):
        reasons.append(f"velocity {np.round(before_v, 2).tolist()} px/frame before the seam, "
                       f"{np.round(after_v, 2).tolist()} after: turned {turn:.0f} deg (<= {SEAM_MAX_TURN_DEG:.0f} "
                       f"allowed), speed x{ratio:.2f} (x{1 / SEAM_SPEED_FACTOR:.2f}-x{SEAM_SPEED_FACTOR:.0f} allowed)")
    return judge.Verdict(not reasons, reasons, {"color": after.color, "velocity_before": np.round(before_v, 3).tolist(),
                                                "velocity_after": np.round(after_v, 3).tolist(),
                                                "turn_deg": round(turn, 1),
                                                "speed_ratio": round(ratio, 3)})


def case_scene(case: tuple[str, str, str, str], seed: int) -> world.Scene:
    """A seeded random scene of a text-to-video ``case`` (colour, shape, direction, background)."""
    return world.random_scene(np.random.default_rng(seed), *case)


def check_reconstruction(model: ToyModel, scene: world.Scene) -> dict[str, judge.Verdict]:
    """The scene's rendered clip through the VAE alone (:meth:`ToyModel.reconstruct`), judged as
    text-to-video (``"t2v"``, with the shape), image-to-video (``"i2v"``, from the clip's own
    frame 0) and continuation (``"continue"``, at the seam): the verdicts a DiT that generated
    the clip's exact latents would get, so their rates are the ceiling of any DiT on this VAE."""
    clip = world.render(scene)
    frames = model.reconstruct(clip)
    return {"t2v": judge_text_to_video(frames, scene.color, scene.shape, scene.direction),
            "i2v": judge_image_to_video(frames, clip[0], scene),
            "continue": judge_continuation(frames, scene)}


def success_rate(verdicts: Iterable[judge.Verdict]) -> float:
    verdicts = list(verdicts)
    return sum(v.ok for v in verdicts) / len(verdicts) if verdicts else 0.0
