"""Fixtures of the sampling tests: the golden tiny models in the official folder layout."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from golden_utils import GOLDEN_DIR, section

from pyramid_core.loading import load_dit, load_vae

sys.path.insert(0, str(Path(__file__).parent))  # sampling_helpers


@pytest.fixture(scope="session")
def golden_model_dir(tmp_path_factory):
    """``{weights key: folder}`` with ``config.json`` + ``diffusion_pytorch_model.safetensors``
    for every tiny model of the golden ``weights`` section (e.g. ``flux_tiny``)."""
    root = tmp_path_factory.mktemp("golden_models")
    folders = {}
    for key, spec in section("weights").items():
        if not isinstance(spec, dict) or "weights_file" not in spec:
            continue
        folder = root / key
        folder.mkdir()
        shutil.copyfile(GOLDEN_DIR / spec["config_file"], folder / "config.json")
        shutil.copyfile(GOLDEN_DIR / spec["weights_file"], folder / "diffusion_pytorch_model.safetensors")
        folders[key] = folder
    return folders


_MODELS: dict = {}


@pytest.fixture(scope="session")
def golden_models(golden_model_dir):
    """A loader ``(weights key) -> model`` (fp32, cached) for the golden tiny models."""

    def get(key: str):
        if key not in _MODELS:
            spec = section("weights")[key]
            loader = load_vae if spec["class"] == "CausalVideoVAE" else load_dit
            _MODELS[key] = loader(golden_model_dir[key], dtype="fp32")
        return _MODELS[key]

    return get
