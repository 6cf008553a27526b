"""Pixel/latent size arithmetic and its input checks."""

import pytest

from pyramid_core.sizes import (MAX_SIDE, check_latents_fit, check_video_size, frames_for_seconds, latent_frames,
                                latent_shape, pixel_frames, pixel_multiple)


def test_pixel_multiple_follows_the_stage_count():
    assert pixel_multiple(3) == 64
    assert pixel_multiple(1) == 16


@pytest.mark.parametrize("frames", [1, 9, 121, 241])
def test_latent_frames_round_trip(frames):
    assert pixel_frames(latent_frames(frames)) == frames


def test_released_sizes():
    assert latent_shape(640, 384, 121) == (1, 16, 16, 48, 80)
    assert latent_shape(1280, 768, 241, batch_size=2) == (2, 16, 31, 96, 160)


def test_seconds_become_whole_latent_frames():
    assert frames_for_seconds(5) == 121
    assert frames_for_seconds(0) == 1
    assert frames_for_seconds(0.1) == 1


@pytest.mark.parametrize("width,height,name,hint", [(650, 384, "width", "use 640 or 704"),
                                                    (640, 390, "height", "use 384 or 448"),
                                                    (32, 384, "width", "use 64 or 128")])
def test_sizes_the_pyramid_cannot_halve_say_what_to_use(width, height, name, hint):
    with pytest.raises(ValueError, match=rf"{name}=\d+ px.*{hint}"):
        check_video_size(width, height)


@pytest.mark.parametrize("frames,hint", [(10, "use 9 or 17"), (0, "use 1 or 9"), (120, "use 113 or 121")])
def test_frame_counts_that_do_not_fit_say_what_to_use(frames, hint):
    with pytest.raises(ValueError, match=hint):
        latent_frames(frames)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        latent_shape(64, 64, 1, batch_size=0)


@pytest.mark.parametrize("seconds", [float("nan"), -1.0, float("inf")])
def test_seconds_that_are_no_length_are_refused(seconds):
    with pytest.raises(ValueError, match="seconds"):
        frames_for_seconds(seconds)


def test_absurd_sizes_are_refused_with_the_released_sizes():
    with pytest.raises(ValueError, match=r"width=99968 px is above the largest size accepted \(8192 px\).*640x384"):
        check_video_size(99968, 384)
    check_video_size(MAX_SIDE, MAX_SIDE)


def test_latents_that_do_not_fit_say_what_does():
    shape = latent_shape(8192, 8192, 8193)
    needed = 16 * 1025 * 1024 * 1024 * 4                                   # 68.7 GB of fp32
    check_latents_fit(shape, needed)                                        # exactly enough
    with pytest.raises(MemoryError, match=r"8192x8192 video of 8193 frames .* need 64\.1 GiB.* 20\.0 GiB free: "
                                          r"at 8192x8192 at most 2553 frames fit"):    # 20 GiB / 64 MiB per latent frame
        check_latents_fit(shape, 20 * 2**30, "the CPU memory")
    with pytest.raises(MemoryError, match="not even one frame at 8192x8192 fits; lower the width and height"):
        check_latents_fit(shape, 2**20)
    with pytest.raises(MemoryError, match="or a batch below 4"):
        check_latents_fit(latent_shape(640, 384, 121, batch_size=4), 2**20 * 4)
