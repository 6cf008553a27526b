"""Reading the golden data in tests/data/golden (see its golden.json).

golden.json has ``sections`` (what each reference call was: arguments, configs, RNG seeds)
and ``tensors`` (one entry per stored tensor). Tensor names are flat; a nested list is
stored as ``name.i.j``. Nothing here knows about a particular section.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"
MANIFEST_DIR = Path(__file__).parent / "data" / "manifests"


@functools.lru_cache(maxsize=None)
def golden() -> dict:
    """The parsed golden.json."""
    return json.loads((GOLDEN_DIR / "golden.json").read_text())


def section(name: str) -> dict:
    """One section of golden.json, e.g. ``"flux.t2v"``."""
    return golden()["sections"][name]


@functools.lru_cache(maxsize=None)
def _tensors() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN_DIR / "golden_tensors.safetensors")


def tensor_names(prefix: str = "") -> list[str]:
    """Names of the stored tensors starting with ``prefix``, in golden.json order."""
    return [name for name in golden()["tensors"] if name.startswith(prefix)]


def has_tensor(name: str) -> bool:
    return name in golden()["tensors"]


def load_tensor(name: str) -> torch.Tensor:
    """A stored tensor by its flat name (a fresh clone, safe to modify)."""
    if name not in _tensors():
        raise KeyError(f"golden tensor {name!r} not found; known prefixes: {sorted({n.split('.')[0] for n in _tensors()})}")
    return _tensors()[name].clone()


def load_nested(prefix: str):
    """Reassemble a nested list stored as ``prefix.i``, ``prefix.i.j``, ... .

    Returns a tensor if ``prefix`` itself is stored, else a list (of lists) ordered by index.
    """
    if has_tensor(prefix):
        return load_tensor(prefix)
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)(?:\.|$)")
    indices = sorted({int(m.group(1)) for name in tensor_names(prefix + ".") if (m := pattern.match(name))})
    if not indices:
        raise KeyError(f"no golden tensor or nested list under {prefix!r}")
    if indices != list(range(len(indices))):
        raise ValueError(f"nested list {prefix!r} has gaps: indices {indices}")
    return [load_nested(f"{prefix}.{i}") for i in indices]


def load_config(file_name: str) -> dict:
    """A JSON file of the golden directory (e.g. a tiny model's config)."""
    return json.loads((GOLDEN_DIR / file_name).read_text())


def load_weights(file_name: str) -> dict[str, torch.Tensor]:
    """A safetensors state dict of the golden directory."""
    return load_file(GOLDEN_DIR / file_name)


def manifest(class_name: str) -> dict:
    """The full-size checkpoint manifest of a released class (tensor names, shapes, config)."""
    return json.loads((MANIFEST_DIR / f"{class_name}.json").read_text())
