"""What the attention code learns about a GPU, kept on disk for the next process.

Two things are costly to learn and the same on every run of a machine: which backend is the
fastest for each kind of call (:mod:`.chooser`, a few timed calls) and whether our kernels
pass their self-check there (:mod:`.selfcheck`, a compile and a small run). Both go into one
JSON file, ``attention.json`` in :func:`cache_dir`, in a section per *machine key*: GPU name
and compute capability, torch, Triton, and a hash of our kernel source. Anything that could
change a verdict changes the key, so an old entry is never applied to new code or hardware.
Triton's own autotuning results go to Triton's cache (``autotune(cache_results=True)``).

Where: ``$PYRAMID_CACHE_DIR``, else ``$XDG_CACHE_HOME/pyramid_core``, else
``~/.cache/pyramid_core``. ``python -m pyramid_core cache`` shows it and ``--clear`` empties
it (our file and our kernels' Triton autotune entries). ``PYRAMID_ATTENTION_CACHE=0`` keeps
everything in memory.

The file is read once per process and rewritten whole (write to a temporary file, then
rename), so processes sharing it never read half a file; concurrent writers may drop each
other's newest entry, which only costs a re-measurement. An unreadable file is ignored with
one warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

CACHE_DIR_ENV = "PYRAMID_CACHE_DIR"
ENABLE_ENV = "PYRAMID_ATTENTION_CACHE"
FILE_NAME = "attention.json"
log = logging.getLogger("pyramid_core.attention")


def cache_dir() -> Path:
    """The folder of pyramid_core's caches (see the module docstring)."""
    explicit = os.environ.get(CACHE_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pyramid_core"


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=None)
def kernel_hash() -> str:
    """A short hash of our kernel source: a changed kernel is a new machine key."""
    source = Path(__file__).with_name("triton_varlen.py").read_bytes()
    return hashlib.sha256(source).hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def machine_key(device: torch.device) -> str:
    """``"<GPU name> sm<major><minor> torch <v> triton <v> kernels <hash>"`` for a CUDA device."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    major, minor = torch.cuda.get_device_capability(device)
    return (f"{torch.cuda.get_device_name(device)} sm{major}{minor} torch {torch.__version__} "
            f"triton {triton_version} kernels {kernel_hash()}")


class DiskCache:
    """``{machine key: {section: {key: value}}}`` in one JSON file (values are JSON)."""

    def __init__(self, path: Path | None = None):
        self._path = path
        self._data: dict | None = None

    @property
    def path(self) -> Path:
        return self._path if self._path is not None else cache_dir() / FILE_NAME

    def _load(self) -> dict:
        if self._data is None:
            self._data = {}
            if enabled() and self.path.is_file():
                try:
                    data = json.loads(self.path.read_text())
                    if not isinstance(data, dict):
                        raise ValueError("not a JSON object")
                    self._data = data
                except (OSError, ValueError) as err:
                    log.warning("pyramid_core attention: ignoring the unreadable cache %s (%s); it will be "
                                "rewritten", self.path, err)
        return self._data

    def get(self, machine: str, section: str, key: str):
        """The stored value, or None."""
        return self._load().get(machine, {}).get(section, {}).get(key)

    def put(self, machine: str, section: str, key: str, value) -> None:
        """Store ``value`` (in memory always, on disk when the cache is enabled)."""
        data = self._load()
        data.setdefault(machine, {}).setdefault(section, {})[key] = value
        if not enabled():
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, prefix=".attention-", suffix=".json",
                                             delete=False) as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(f.name, self.path)
        except OSError as err:                     # a read-only home: remember in memory only
            log.warning("pyramid_core attention: cannot write the cache %s (%s); measurements are kept for "
                        "this process only", self.path, err)

    def entries(self) -> dict:
        """Everything stored, for ``python -m pyramid_core cache``."""
        return self._load()

    def forget(self) -> None:
        """Drop what this process read (the file stays)."""
        self._data = None


# The process-wide cache used by the chooser and the self-check.
shared = DiskCache()


def triton_autotune_files() -> list[Path]:
    """Our kernels' autotune results in Triton's cache (``<kernel name>.autotune.json``)."""
    try:
        from triton import knobs
        root = Path(knobs.cache.dir)
    except (ImportError, AttributeError):
        return []
    if not root.is_dir():
        return []
    return sorted(root.glob("*/_varlen_*_kernel.autotune.json"))


def clear() -> list[Path]:
    """Delete our cache file and our kernels' Triton autotune entries; returns what was removed."""
    removed = []
    for path in [shared.path, *triton_autotune_files()]:
        if path.is_file():
            path.unlink()
            removed.append(path)
    shared.forget()
    return removed
