"""The jobs of ``generate-batch``: one JSONL row each, all checked before any model loads.

A row is ``{"id": "fox-1", "prompt": "a red fox in snow", "seed": 1, "seconds": 5}`` plus,
optionally, any option of ``generate`` under its own name with ``_`` for ``-``
(:data:`JOB_FIELDS`), ``"image": path`` (image-to-video) or ``"video": path``
(continuation). Options the row leaves out take the command line's values. Relative image
and video paths are read from the JSONL file's folder, so a batch runs the same from any
working directory and on every node.

Every problem of the file (a line that does not parse, an unknown field, a run-wide option
in a row, a bad value, a missing file, a duplicate id) is collected with its line number and
reported at once, as one :class:`JobFileError`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
MAX_REPORTED = 20          # problems listed before "... and N more"


class JobFileError(ValueError):
    """A jobs file with problems; ``str()`` lists them with their line numbers."""


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"must be an integer, got {value!r}")
    return int(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"must be a number, got {value!r}")
    return float(value)


def _tile(value: Any) -> int | str | None:
    from ..models.vae.budget import parse_tile_size

    return parse_tile_size(value)


def _per_stage(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One value for all stages, a list (one per stage), or the command line's "20,20,20"."""

    def parse(value: Any):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
            try:
                value = [json.loads(v) for v in value]
            except ValueError:
                raise ValueError(f"must be a number or a comma list such as 20,20,20, got {value!r}") from None
        if isinstance(value, list):
            if not value:
                raise ValueError("must not be an empty list")
            values = [kind(v) for v in value]
            return values[0] if len(values) == 1 else values
        return kind(value)

    return parse


def _path(value: Any) -> str:
    return _text(value)


# Row fields and how each is read; the names are generate's options with _ for -.
JOB_FIELDS: dict[str, Callable[[Any], Any]] = {
    "prompt": _text, "negative_prompt": _text, "prompt_suffix": _text, "seed": _integer,
    "seconds": _number, "frames": _integer, "width": _integer, "height": _integer, "fps": _integer,
    "steps": _per_stage(_integer), "video_steps": _per_stage(_integer),
    "guidance": _per_stage(_number), "video_guidance": _per_stage(_number),
    "history_frames": _integer, "recent_units": _integer, "vae_tile": _tile,
    "image": _path, "video": _path,
}
# Options that hold for the whole run (one set of models per process): command line only.
RUN_OPTIONS = ("model_dir", "dit", "vae", "text_encoders", "variant", "dtype", "vae_dtype", "weight_dtype",
               "block_swap", "text_encoder_device", "text_encoder_weights", "device", "compile", "parallel",
               "sequence_size", "out_dir", "prompts", "save_latents", "output", "mode")


@dataclass(frozen=True)
class Job:
    """One row: its ``request`` (a ``generate`` namespace), pixel frames and output files."""

    id: str
    line: int
    request: argparse.Namespace
    num_frames: int
    output: Path
    latents: Optional[Path]

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (self.output,) if self.latents is None else (self.latents, self.output)

    def done(self) -> bool:
        """Every output of the job exists (each is written atomically, the media file last)."""
        return all(path.is_file() for path in self.outputs)

    @property
    def text_key(self) -> tuple:
        r = self.request
        return (r.prompt, r.negative_prompt or "", r.prompt_suffix)

    @property
    def cost(self) -> float:
        """Relative work, for sharing jobs out: frames x pixels (variant size when unset)."""
        r = self.request
        return self.num_frames * (r.width or 640) * (r.height or 384)

    def describe(self) -> dict:
        """The row as it will run (for the latents file's metadata)."""
        fields = {k: getattr(self.request, k) for k in JOB_FIELDS if getattr(self.request, k, None) is not None}
        return {"id": self.id, "mode": self.request.mode, **fields, "frames": self.num_frames}


def _job_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value) or value.endswith(".tmp"):
        raise ValueError(f'"id" must be a file name of letters, digits, ".", "_" and "-" (not starting with "." '
                         f"or \"-\", not ending in .tmp), got {value!r}")
    return value


def _request(row: dict, defaults: argparse.Namespace, base: Path) -> argparse.Namespace:
    """``defaults`` with the row's fields applied; ``ValueError`` naming the first bad field."""
    request = argparse.Namespace(**vars(defaults))
    for key, value in row.items():
        if key == "id":
            continue
        if key in RUN_OPTIONS:
            raise ValueError(f'"{key}" holds for the whole run: give it on the command line')
        if key not in JOB_FIELDS:
            raise ValueError(f'unknown field "{key}"; a job may set id, {", ".join(JOB_FIELDS)}')
        try:
            setattr(request, key, JOB_FIELDS[key](value))
        except ValueError as err:
            raise ValueError(f'"{key}" {err}') from None
    if "seconds" in row and "frames" in row:
        raise ValueError('give "seconds" or "frames", not both')
    if "seconds" in row:
        request.frames = None                             # the row's length wins over --frames
    if "frames" in row:
        request.seconds = None
    if row.get("image") is not None and row.get("video") is not None:
        raise ValueError('give "image" (image-to-video) or "video" (continuation), not both')
    for key in ("image", "video"):
        path = getattr(request, key, None)
        if path is not None:
            path = Path(path) if Path(path).is_absolute() else base / path
            if not path.is_file():
                raise ValueError(f'"{key}" {path}: no such file')
            setattr(request, key, str(path))
    request.mode = "i2v" if request.image else "continue" if request.video else "t2v"
    if not request.prompt:
        raise ValueError('no "prompt" (and no --prompt default on the command line)')
    return request


def read_jobs(path: str | Path, defaults: argparse.Namespace, out_dir: Path, *, save_latents: bool,
              check: Callable[[argparse.Namespace], int]) -> list[Job]:
    """Parse and check every row of ``path``.

    Args:
        defaults: the command line's ``generate`` options (``image``/``video`` None).
        out_dir: where outputs go: ``<id>.mp4`` (``<id>.png`` for one frame) and, with
            ``save_latents``, ``<id>.safetensors``.
        check: checks one request as ``generate`` would and returns its pixel frame count
            (``ValueError`` / ``FileNotFoundError`` otherwise).

    Returns:
        The jobs in file order. Raises :class:`JobFileError` listing every problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file")
    jobs, problems, seen = [], [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a job is a JSON object, got {type(row).__name__}")
            if "id" not in row:
                raise ValueError('no "id" (each job needs one: it names the output files)')
            job_id = _job_id(row["id"])
            # Ids name files: "Fox" and "fox" are one file on macOS and Windows file systems.
            first = seen.get(job_id.casefold())
            if first is not None:
                first_number, first_id = first
                same = "" if first_id == job_id else f' as "{first_id}": ids that differ only in case name one file'
                raise ValueError(f'duplicate id "{job_id}" (first on line {first_number}{same})')
            seen[job_id.casefold()] = (number, job_id)
            request = _request(row, defaults, path.parent)
            num_frames = check(request)
        except json.JSONDecodeError as err:
            problems.append(f"line {number}: not JSON ({err.msg} at column {err.colno})")
            continue
        except (ValueError, FileNotFoundError) as err:
            problems.append(f"line {number}: {err}")
            continue
        output = out_dir / f"{job_id}{'.png' if num_frames == 1 else '.mp4'}"
        latents = out_dir / f"{job_id}.safetensors" if save_latents else None
        jobs.append(Job(job_id, number, request, num_frames, output, latents))
    if problems:
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        raise JobFileError(f"{path}: {len(problems)} bad job(s), nothing was run:\n  " + "\n  ".join(shown)
                           + (f"\n  ... and {more} more" if more else ""))
    if not jobs:
        raise JobFileError(f"{path} holds no jobs (one JSON object per line)")
    return jobs
