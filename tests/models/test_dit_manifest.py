"""The pyramid DiTs built at full size from the released configs match the checkpoint manifests.

Built on the meta device: no memory, no weights; only names, shapes and dtypes are compared.
"""

from __future__ import annotations

import pytest
import torch

import pyramid_core.models as models
from golden_utils import manifest
from pyramid_core.models.dit_layers import RUNTIME_CONFIG_KEYS

DIT_CLASSES = ["PyramidFluxTransformer", "PyramidDiffusionMMDiT"]


def _build_meta(class_name: str):
    spec = manifest(class_name)
    with torch.device("meta"):
        model = getattr(models, class_name).from_config(spec["released_config"])
    return spec, model


@pytest.mark.parametrize("class_name", DIT_CLASSES)
def test_state_dict_matches_manifest(class_name):
    spec, model = _build_meta(class_name)
    state = model.state_dict()
    ours = {name: list(t.shape) for name, t in state.items()}
    expected = spec["state_dict"]
    assert sorted(set(expected) - set(ours)) == [], "missing tensors"
    assert sorted(set(ours) - set(expected)) == [], "unexpected tensors"
    assert {n: s for n, s in ours.items() if s != expected[n]} == {}, "shape mismatches"
    dtypes = {name: str(t.dtype).removeprefix("torch.") for name, t in state.items()}
    assert dtypes == spec["dtype_at_construction"]
    assert sum(p.numel() for p in model.parameters()) == spec["total_parameters"]
    buffers = sorted(name for name, _ in model.named_buffers())
    assert buffers == sorted(spec["persistent_buffers"] + spec["non_persistent_buffers"])


@pytest.mark.parametrize("class_name", DIT_CLASSES)
def test_defaults_reproduce_the_official_loader(class_name):
    """from_config(released config) alone gives every constructor argument the official
    loader passes (architecture ones), and keeps runtime switches out of the config."""
    spec, model = _build_meta(class_name)
    for key, value in spec["constructor_kwargs_used"].items():
        if key in RUNTIME_CONFIG_KEYS:
            assert key not in model.config
        else:
            ours = model.config[key]
            assert (list(ours) if isinstance(ours, (list, tuple)) else ours) == value, key
