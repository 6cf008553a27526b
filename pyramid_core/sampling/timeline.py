"""A video's time as the samplers count it, and schedules written against it.

A temporal unit is conditioned on what is in force at its first frame: the first unit (the
image, latent frame 0) at 0 s, the unit starting at latent frame ``k >= 1`` at pixel frame
``1 + 8 (k - 1)``, i.e. ``(1 + 8 (k - 1)) / 24`` seconds. Schedules by time are written one
entry per line, ``<seconds>[s]: <value>``, for example::

    0s: a red fox walks through snow
    4s: the fox starts to run

and are checked before any model runs: times must be numbers, start at 0 and rise strictly,
and (once the length is known) no entry may start after the video's last frame. Every error
names its line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..sizes import FRAMES_PER_SECOND
from ..variants import VAE_TEMPORAL_FACTOR

__all__ = ["TimedLine", "check_schedule_fits", "in_force", "parse_timed_lines", "unit_in_video",
           "unit_start_seconds"]


def unit_start_seconds(latent_frame: int) -> float:
    """Time of the first pixel frame of the unit starting at ``latent_frame``."""
    return 0.0 if latent_frame == 0 else (1 + VAE_TEMPORAL_FACTOR * (latent_frame - 1)) / FRAMES_PER_SECOND


def unit_in_video(latent_frame: int, frame_per_unit: int) -> int:
    """Index in the video of the unit starting at ``latent_frame`` (the first frame is unit 0)."""
    return 0 if latent_frame == 0 else 1 + (latent_frame - 1) // frame_per_unit


# --------------------------------------------------------------------------------------
# "<seconds>: <value>" lines
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TimedLine:
    """One entry of a schedule: from ``seconds`` on, ``value``; ``number`` is its line (1-based)."""

    number: int
    seconds: float
    value: str

    def __str__(self) -> str:
        return f"line {self.number} ({self.seconds:g}s: {self.value})"


_LINE = re.compile(r"^\s*([^:]*?)\s*:\s*(.*?)\s*$")


def parse_timed_lines(text: str, what: str) -> list[TimedLine]:
    """The entries of a schedule, one ``<seconds>[s]: <value>`` per non-empty line.

    ``ValueError`` naming the line for a line without a time, a time that is no finite
    number or negative, a first entry after 0 s, and times that do not rise strictly.
    ``what`` names the schedule in messages (``"prompt schedule"``).
    """
    entries: list[TimedLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        match = _LINE.match(raw)
        stamp = match.group(1).removesuffix("s").strip() if match else ""
        try:
            seconds = float(stamp)
        except ValueError:
            raise ValueError(f"{what}, line {number} {raw.strip()!r}: write '<seconds>: <value>', "
                             "e.g. '0s: a red fox walks through snow'") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{what}, line {number} {raw.strip()!r}: the time must be 0 seconds or more")
        if not match.group(2):
            raise ValueError(f"{what}, line {number} {raw.strip()!r}: nothing after the time")
        if entries and seconds <= entries[-1].seconds:
            raise ValueError(f"{what}, line {number} {raw.strip()!r}: times must rise; {seconds:g}s does not "
                             f"come after line {entries[-1].number} ({entries[-1].seconds:g}s)")
        entries.append(TimedLine(number, seconds, match.group(2)))
    if not entries:
        raise ValueError(f"the {what} is empty: give at least '0s: ...'")
    if entries[0].seconds != 0:
        raise ValueError(f"{what}, line {entries[0].number}: the first entry must start at 0s (what is in force "
                         f"before {entries[0].seconds:g}s?)")
    return entries


def check_schedule_fits(lines: tuple[TimedLine, ...], num_latent_frames: int, what: str) -> None:
    """``ValueError`` naming the first entry that starts after the video's last frame."""
    last_frame = 1 + VAE_TEMPORAL_FACTOR * (num_latent_frames - 1)
    end = (last_frame - 1) / FRAMES_PER_SECOND
    for line in lines:
        if line.seconds > end:
            raise ValueError(f"{what}, {line} starts after the video's end: {last_frame} frames last "
                             f"{end:.3f}s; make the video longer or remove the line")


def in_force(lines: tuple[TimedLine, ...], seconds: float) -> int:
    """Index of the entry in force at ``seconds`` (the last one starting at or before it)."""
    index = 0
    for position, line in enumerate(lines):
        if line.seconds <= seconds + 1e-9:
            index = position
    return index
