"""The pixel measures of the toy world judge its own clips right, and reject what they must.

The quality tests (test_toy_model.py) trust these measures; here they meet clips whose answer
is known: every rendered combination passes, and a wrong colour, a wrong or missing motion,
grey noise and a frozen frame fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from pyramid_core.toy import checks, judge, world


@pytest.mark.parametrize("background", sorted(world.BACKGROUNDS))
def test_every_rendered_combination_passes(background):
    rng = np.random.default_rng(0)
    for color, shape, direction in world.combinations():
        scene = world.random_scene(rng, color, shape, direction, background)
        frames = world.render(scene)
        verdict = judge.judge_motion(frames, color, direction)
        assert verdict.ok, (scene, verdict)
        reading = judge.read_video(frames)
        assert judge.dominant_shape(reading) == shape, (scene, reading.shapes)
        assert all(s == shape for s in reading.shapes), (scene, reading.shapes)
        # the measured velocity is the scene's, within the rounding of anti-aliased edges
        expected = np.asarray(world.DIRECTIONS[direction]) * scene.speed
        assert np.allclose(reading.velocity(), expected, atol=0.05), (scene, reading.velocity())


def test_wrong_colour_and_direction_fail():
    scene = world.random_scene(np.random.default_rng(1), "red", "circle", "right", "gray")
    frames = world.render(scene)
    assert not judge.judge_motion(frames, "blue", "right").ok
    for wrong in ("left", "up", "down"):
        verdict = judge.judge_motion(frames, "red", wrong)
        assert not verdict.ok and "moved" in verdict.reasons[0], verdict


def test_text_to_video_also_needs_the_prompted_shape():
    """checks.judge_text_to_video: colour and motion as judge_motion, and the shape most frames show."""
    scene = world.random_scene(np.random.default_rng(5), "blue", "triangle", "down", "striped")
    frames = world.render(scene)
    assert checks.judge_text_to_video(frames, "blue", "triangle", "down").ok
    for wrong in ("square", "circle"):
        verdict = checks.judge_text_to_video(frames, "blue", wrong, "down")
        assert not verdict.ok and verdict.reasons == [f"most frames show a triangle, asked for a {wrong}"], verdict
    verdict = checks.judge_text_to_video(frames, "red", "square", "down")
    assert not verdict.ok and len(verdict.reasons) == 2, verdict


def test_a_still_object_and_noise_fail():
    scene = world.random_scene(np.random.default_rng(2), "yellow", "square", "up", "black")
    still = np.repeat(world.render(scene, frames=1), world.FRAMES, axis=0)
    assert not judge.judge_motion(still, "yellow", "up").ok
    rng = np.random.default_rng(3)
    grey = np.clip(rng.normal(128, 40, (world.FRAMES, 64, 64, 3)), 0, 255).astype(np.uint8)
    for color, direction in (("red", "right"), ("blue", "down")):
        assert not judge.judge_motion(grey, color, direction).ok
    assert judge.read_video(np.full((3, 64, 64, 3), 128, np.uint8)).color is None


def test_an_object_that_leaves_the_frame_fails_the_presence_check():
    scene = world.random_scene(np.random.default_rng(4), "green", "square", "right", "black")
    frames = world.render(scene)
    frames[8:] = world.BACKGROUNDS["black"][0]
    verdict = judge.judge_motion(frames, "green", "right")
    assert not verdict.ok and any("present" in r for r in verdict.reasons), verdict


def test_shapes_are_told_apart_at_every_size():
    for size in np.linspace(*world.SIZE_RANGE, 5):
        for shape in world.SHAPES:
            mask = world.shape_coverage(shape, 63.3, 62.7, float(size)) >= 0.5      # inside the 128 px frame
            assert judge.classify_shape(mask) == shape, (shape, size)
    assert judge.classify_shape(np.zeros((64, 64), bool)) is None


def test_velocity_fit_and_displacement_ignore_missing_frames():
    centroids = np.stack([np.arange(9) * 2.0 + 10, np.full(9, 30.0)], axis=1)
    centroids[4] = np.nan
    reading = judge.Reading("red", np.full(9, 100.0), centroids)
    assert np.allclose(reading.velocity(), [2.0, 0.0])
    assert np.allclose(reading.displacement(), [12.0, 0.0])    # mean of the last 3 minus the first 3


def test_silhouettes_match_wherever_they_are_and_differ_between_shapes():
    reference = world.shape_coverage("square", 30.0, 30.0, 8.0) >= 0.5
    moved = world.shape_coverage("square", 44.4, 19.7, 8.0) >= 0.5
    assert judge.silhouette_iou(moved, reference) > 0.9
    assert 0.7 < judge.silhouette_iou(world.shape_coverage("circle", 40.0, 40.0, 8.0) >= 0.5, reference) < 0.85
    assert judge.silhouette_iou(world.shape_coverage("triangle", 40.0, 40.0, 8.0) >= 0.5, reference) < 0.6
    assert judge.silhouette_iou(np.zeros_like(reference), reference) == 0.0
    scene = world.random_scene(np.random.default_rng(5), "blue", "triangle", "left", "striped")
    masks = judge.color_masks(world.render(scene), "blue")
    assert masks.shape == (world.FRAMES, world.HEIGHT, world.WIDTH)
    assert min(judge.silhouette_iou(m, masks[0]) for m in masks) > 0.8


def test_the_continuation_seam_passes_the_clip_and_fails_a_stop_a_turn_and_a_reversal():
    """checks.judge_continuation against clips whose answer is known: the rendered clip itself
    passes; one whose object stops, turns 90 degrees or reverses at the seam fails."""
    from dataclasses import replace

    from pyramid_core.toy import checks

    scene = world.random_scene(np.random.default_rng(6), "red", "square", "right", "gray")
    clip = world.render(scene)
    verdict = checks.judge_continuation(clip, scene)
    assert verdict.ok and verdict.measures["turn_deg"] < 1 and 0.97 < verdict.measures["speed_ratio"] < 1.03, verdict
    seam = checks.SEAM
    stop = clip.copy()
    stop[seam:] = clip[seam - 1]
    x, y = scene.center(seam - 1)
    for name, frames in (
        ("stop", stop),
        ("turn", world.render(replace(scene, direction="down", x=x, y=y), frames=world.FRAMES - seam)),
        ("reverse", world.render(replace(scene, direction="left", x=x, y=y), frames=world.FRAMES - seam)),
    ):
        if name != "stop":
            frames = np.concatenate([clip[:seam], frames])
        verdict = checks.judge_continuation(frames, scene)
        assert not verdict.ok and "velocity" in verdict.reasons[0], (name, verdict)
    assert not checks.judge_continuation(clip, replace(scene, color="blue")).ok


def test_a_ragged_or_speckled_shape_keeps_its_name():
    """A generated shape is rarely clean: a stray bar by a corner, a few stray pixels of its
    colour and some holes must not change what it reads as (a bounding box's fill, which the
    specks stretch over the frame, read the square and the circle as triangles)."""
    rng = np.random.default_rng(0)
    for shape in world.SHAPES:
        mask = world.shape_coverage(shape, 60.2, 66.8, 29.0) >= 0.5
        mask[30:34, 88:100] = True                            # a bar by the top-right corner
        mask[rng.integers(0, 128, 6), rng.integers(0, 128, 6)] = True   # specks anywhere
        holes = np.argwhere(mask)[rng.choice(int(mask.sum()), 40, replace=False)]
        mask[holes[:, 0], holes[:, 1]] = False                # and a few holes
        assert judge.classify_shape(mask) == shape, shape
    edge = world.shape_coverage("triangle", 20.0, 110.0, 30.0) >= 0.5     # cut by the frame's corner
    assert judge.classify_shape(edge) is not None
