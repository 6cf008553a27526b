"""Pyramid DiT forward against the reference implementation (tests/data/golden).

Everything is read from golden.json: which tiny models exist (``weights`` section), which
DiT calls were recorded with full inputs (tensors ``<family>.<call>.in.*`` / ``.out``, in
inference and training form), and every DiT call of the end-to-end text-to-video runs
(``<family>.t2v`` ``dit_calls``), whose history clips are rebuilt from the run's generated
latents as the reference sampler built them.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import pyramid_core.models as models
from golden_utils import golden, has_tensor, load_config, load_nested, load_tensor, load_weights, section, tensor_names

ATOL = 1e-4
CFG_ORDER = ("neg", "pos")  # the reference's guidance batch is cat([negative, positive])
DIT_CLASSES = ("PyramidFluxTransformer", "PyramidDiffusionMMDiT")


def _families() -> dict[str, dict]:
    """``{"flux": weights entry, "mmdit": ...}`` from the ``weights`` section (DiT classes only)."""
    return {
        key.removesuffix("_tiny"): spec
        for key, spec in section("weights").items()
        if isinstance(spec, dict) and spec.get("class") in DIT_CLASSES
    }


FAMILIES = _families()


def _direct_calls() -> list[tuple[str, str]]:
    """(family, call prefix) of every DiT call stored with its inputs and outputs."""
    calls = []
    for family in FAMILIES:
        prefixes = {m.group(1) for n in tensor_names(family + ".") if (m := re.match(rf"({re.escape(family)}\.[\w]+)\.in\.sample\.", n))}
        calls += [(family, p) for p in sorted(prefixes) if has_tensor(p + ".out") or has_tensor(p + ".out.0")]
    return calls


def _t2v_calls() -> list[tuple[str, str, int]]:
    """(family, section, call index) of every DiT call of the end-to-end runs whose input and
    output were stored (a run may store only its first and last call, as ``<family>.infer_*``)."""
    calls = []
    for family in FAMILIES:
        for name, sec in golden()["sections"].items():
            if name.startswith(family + ".") and "dit_calls" in sec:
                calls += [(family, name, call["call"]) for call in sec["dit_calls"]
                          if has_tensor(f"{name}.call{call['call']}.out")]
    return calls


def _t2v_runs(family: str) -> list[str]:
    return [name for name, sec in golden()["sections"].items() if name.startswith(family + ".") and "dit_calls" in sec]


_MODEL_CACHE: dict[str, torch.nn.Module] = {}


def tiny_model(family: str) -> torch.nn.Module:
    if family not in _MODEL_CACHE:
        spec = FAMILIES[family]
        model = getattr(models, spec["class"]).from_config(load_config(spec["config_file"]))
        model.load_state_dict(load_weights(spec["weights_file"]), strict=True)
        _MODEL_CACHE[family] = model.eval()
    return _MODEL_CACHE[family]


def _stored_inputs(prefix: str) -> dict:
    """Keyword arguments of a recorded call: every ``<prefix>.in.<arg>[...]`` tensor (list)."""
    args = {n[len(prefix) + 4 :].split(".")[0] for n in tensor_names(prefix + ".in.")}
    return {arg: load_nested(f"{prefix}.in.{arg}") for arg in args}


def _as_list(x):
    return x if isinstance(x, list) else [x]


def _max_err(outputs, expected) -> float:
    assert len(outputs) == len(expected)
    for o, e in zip(outputs, expected):
        assert o.shape == e.shape
    return max((o - e).abs().max().item() for o, e in zip(outputs, expected))


@pytest.mark.parametrize("family,prefix", _direct_calls())
def test_recorded_dit_call(family, prefix):
    with torch.no_grad():
        out = tiny_model(family)(**_stored_inputs(prefix))
    assert _max_err(out, _as_list(load_nested(prefix + ".out"))) <= ATOL


@pytest.mark.parametrize("family,prefix", [c for c in _direct_calls() if has_tensor(c[1] + ".loss")])
def test_training_loss_from_dit_outputs(family, prefix):
    """The recorded loss is the mean over columns of per-sample MSE(DiT output, target)."""
    with torch.no_grad():
        out = tiny_model(family)(**_stored_inputs(prefix))
    targets = _as_list(load_nested(prefix + ".targets"))
    per_sample = torch.cat([((o - t) ** 2).flatten(1).mean(1) for o, t in zip(out, targets)])
    assert abs(per_sample.mean().item() - load_tensor(prefix + ".loss").item()) <= 1e-5


# ----------------------------------------------------------------------------------------
# Every DiT call of the end-to-end runs
# ----------------------------------------------------------------------------------------


def _halve_to(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear 2x downsampling, repeated until ``(height, width)`` (the reference's pyramid
    of clean history latents)."""
    b, c, t = latents.shape[:3]
    x = latents.transpose(1, 2).flatten(0, 1)  # (B*T, C, H, W)
    while x.shape[-2] > height:
        x = F.interpolate(x, size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear")
    assert x.shape[-2:] == (height, width)
    return x.unflatten(0, (b, t)).transpose(1, 2)  # (B, C, T, h, w)


def _history_clips(generated: torch.Tensor, clip_shapes: list[list[int]]) -> list[torch.Tensor]:
    """History clips of one call: consecutive frames of the generated latents, each clip at its
    recorded size, repeated over the CFG batch."""
    clips, start = [], 0
    for b, _, t, h, w in clip_shapes[:-1]:
        clip = _halve_to(generated[:, :, start : start + t], h, w)
        clips.append(clip.repeat(b // clip.shape[0], 1, 1, 1, 1))
        start += t
    return clips


def _t2v_inputs(name: str, call_index: int) -> tuple[dict, torch.Tensor]:
    call = next(c for c in section(name)["dit_calls"] if c["call"] == call_index)
    prefix = f"{name}.call{call_index}"
    history = _history_clips(load_tensor(f"{name}.output_latents"), call["clip_shapes"])
    text = {key: torch.cat([load_tensor(f"{name}.text.{cond}.{key}") for cond in CFG_ORDER])
            for key in ("prompt_embeds", "attention_mask", "pooled")}
    inputs = dict(
        sample=[history + [load_tensor(prefix + ".in.current")]],
        encoder_hidden_states=text["prompt_embeds"],
        encoder_attention_mask=text["attention_mask"],
        pooled_projections=text["pooled"],
        timestep_ratio=load_tensor(prefix + ".in.timestep_ratio"),
    )
    assert [list(c.shape) for c in inputs["sample"][0]] == call["clip_shapes"]
    return inputs, load_tensor(prefix + ".out")


@pytest.mark.parametrize("family,name,call_index", _t2v_calls())
def test_t2v_dit_call(family, name, call_index):
    inputs, expected = _t2v_inputs(name, call_index)
    with torch.no_grad():
        out = tiny_model(family)(**inputs)
    assert _max_err(out, [expected]) <= ATOL


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rebuilt_history_matches_the_recorded_history_call(family):
    """Cross-check of the history rebuild above with the call stored with all its inputs."""
    prefix = f"{family}.infer_hist"
    if not has_tensor(prefix + ".in.sample.0.0"):
        pytest.skip("no history call stored with its inputs")
    match = re.search(r"call #(\d+)", golden()["tensors"][prefix + ".in.sample.0.0"]["desc"])
    runs = _t2v_runs(family)
    if not match or not runs:
        pytest.skip("the stored history call does not name its t2v call")
    call = next(c for c in section(runs[0])["dit_calls"] if c["call"] == int(match.group(1)))
    history = _history_clips(load_tensor(f"{runs[0]}.output_latents"), call["clip_shapes"])
    stored = load_nested(prefix + ".in.sample")[0]
    assert len(history) == len(stored) - 1
    assert _max_err(history, stored[:-1]) <= 1e-6
