"""Training checkpoints: atomic single files, keep-last-N, exact resume, weight export.

A training checkpoint ``step-00001000.pt`` is one ``torch.save`` dict that loads with
``weights_only=True`` (tensors, numbers, strings, lists and dicts only)::

    {"step", "config", "model_config", "model", "optimizer", "scheduler", "ema",
     "rng", "data": {"batches": n}, "best_loss", ...trainer extras}

Together with the seeded :class:`~.data.BucketBatchSampler` this resumes a run exactly:
the next losses equal those of a run that was never stopped (bit-exact on the CPU).
Weights for inference are exported separately in the official folder layout.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("pyramid_core.training")

_NAME = re.compile(r"^step-(\d{8,})\.pt$")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, str(tmp))
    tmp.replace(path)


class CheckpointManager:
    """Numbered checkpoints in one folder; only the ``keep_last`` newest stay."""

    def __init__(self, directory: str | Path, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every finished checkpoint, oldest first (temporary files ignored)."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``state`` for ``step`` atomically, then delete all but the newest ``keep_last``."""
        path = self.path_for(step)
        atomic_torch_save({**state, "step": step}, path)
        for _, old in self.checkpoints()[:-self.keep_last]:
            old.unlink(missing_ok=True)
        return path


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :class:`CheckpointManager` (weights-only unpickling)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable training checkpoint ({err}); delete it to resume "
                         "from the one before") from None


def resolve_resume(resume: str, manager: CheckpointManager) -> Path | None:
    """``"auto"`` -> the latest checkpoint if any, ``"none"`` -> None, else the given path."""
    if resume == "none":
        return None
    if resume == "auto":
        return manager.latest()
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume!r}: no such checkpoint")
    return path


# --------------------------------------------------------------------------------------
# RNG state (weights-only friendly)
# --------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors and plain numbers."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_gauss": float(gauss),
        "python_version": int(version), "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------

def export_diffusers_folder(state_dict: dict[str, torch.Tensor], config: dict[str, Any], folder: str | Path,
                            class_name: str, dtype: torch.dtype | None = None) -> Path:
    """``config.json`` + ``diffusion_pytorch_model.safetensors``: the official layout that
    ``pyramid_core.loading.load_vae`` / ``load_dit`` read. Each file is written atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in state_dict.items()}
    weights = folder / "diffusion_pytorch_model.safetensors"
    tmp = folder / ".diffusion_pytorch_model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(weights)
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg["_class_name"] = class_name
    tmp = folder / ".config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=1))
    tmp.replace(folder / "config.json")
    return folder
