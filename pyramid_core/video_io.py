"""Frames in and out: pixels <-> uint8 frames, and mp4 files through PyAV.

Frames are ``(T, H, W, 3)`` uint8 tensors (a batch: ``(B, T, H, W, 3)``), the layout of
ComfyUI ``IMAGE`` batches times 255 and of video files. PyAV is imported only when a file
is read or written.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import torch

from .sizes import FRAMES_PER_SECOND

__all__ = ["frames_to_pixels", "frames_to_uint8", "read_image", "read_video", "write_video"]


def frames_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """VAE output ``(B, 3, T, H, W)`` in about [-1, 1] -> ``(B, T, H, W, 3)`` uint8.

    ``x * 127.5 + 127.5``, clamped, truncated to integers: the reference's conversion.
    """
    if pixels.ndim != 5 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (B, 3, T, H, W), got shape {tuple(pixels.shape)}")
    frames = pixels.to(torch.float32).mul(127.5).add(127.5).clamp(0, 255).to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1).contiguous()


def frames_to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """``(T, H, W, 3)`` / ``(B, T, H, W, 3)`` uint8 -> ``(B, 3, T, H, W)`` fp32 in [-1, 1]."""
    if frames.ndim == 4:
        frames = frames[None]
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) or (B, T, H, W, 3), got shape {tuple(frames.shape)}")
    values = frames.to(torch.float32) / 255 if frames.dtype == torch.uint8 else frames.to(torch.float32)
    return ((values - 0.5) / 0.5).permute(0, 4, 1, 2, 3).contiguous()


def _temporary_name(path: Path) -> Path:
    """Where a file is written before it is renamed to ``path``: hidden, so a folder of results
    never shows a half-written file as one of them, and with ``path``'s suffix, which tells
    FFmpeg the format."""
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def write_video(path: str | Path, frames: torch.Tensor, fps: int = FRAMES_PER_SECOND,
                codec: str = "libx264", crf: int = 18) -> Path:
    """Write ``(T, H, W, 3)`` uint8 frames as an H.264 mp4 (yuv420p; H and W must be even).

    The file is written next to its final name and renamed at the end, so a crash never
    leaves a truncated video behind.
    """
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"H.264 needs an even frame size, got {width}x{height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(int(fps), 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames.cpu().numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


# Image files PyAV writes through FFmpeg's image2 muxer: codec and pixel format per suffix.
IMAGE_CODECS = {".png": ("png", "rgb24"), ".jpg": ("mjpeg", "yuvj420p"), ".jpeg": ("mjpeg", "yuvj420p"),
                ".webp": ("libwebp", "yuv420p")}
IMAGE_SUFFIXES = tuple(IMAGE_CODECS)


def write_image(path: str | Path, frame: torch.Tensor) -> Path:
    """Write one ``(H, W, 3)`` uint8 frame as a png (lossless), jpg or webp file, atomically."""
    import av

    path = Path(path)
    if path.suffix.lower() not in IMAGE_CODECS:
        raise ValueError(f"{path}: write images as one of {', '.join(IMAGE_SUFFIXES)}")
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != torch.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {tuple(frame.shape)} {frame.dtype}")
    codec, pix_fmt = IMAGE_CODECS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    with av.open(str(tmp), mode="w", format="image2", options={"update": "1"}) as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], pix_fmt
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame.cpu().numpy(), format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def read_video(path: str | Path) -> tuple[torch.Tensor, float]:
    """All frames of a video file as ``(T, H, W, 3)`` uint8, and its frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
        fps = float(stream.average_rate or FRAMES_PER_SECOND)
    if not frames:
        raise ValueError(f"{path} has no video frames")
    return torch.stack(frames), fps


def read_image(path: str | Path) -> torch.Tensor:
    """An image file (anything FFmpeg reads: png, jpg, webp ...) as ``(H, W, 3)`` uint8."""
    frames, _ = read_video(path)
    return frames[0]
