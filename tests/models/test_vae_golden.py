"""CausalVideoVAE against the reference's golden outputs, driven by golden.json.

Every ``vae.<group>`` call recorded in ``sections.vae.calls`` is parsed (method, input
tensor, chunking and tiling arguments) and replayed with our API, so a regenerated golden
set drops in unchanged. A final check makes sure no stored ``vae.*`` output went unchecked.
"""

from __future__ import annotations

import ast
import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pyramid_core.latents import denormalize_latents
from pyramid_core.models.vae import CausalVideoVAE
from pyramid_core.rng import standard_normal
from pyramid_core.variants import VARIANTS

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
ATOL = 1e-4  # fp32
VAE_WEIGHTS_KEY = "vae_tiny"

# Reference defaults that a recorded call may leave out (CausalVideoVAE.encode/decode).
REFERENCE_DEFAULT_WINDOW = {"encode": 16, "decode": 2}
REFERENCE_DEFAULT_TILE = 256
# The reference pipeline's decode_latent: save_memory -> (window_size, tile_sample_min_size).
PIPELINE_DECODE_WINDOW = {True: 1, False: 2}


# ---------------------------------------------------------------- golden helpers


@lru_cache(maxsize=1)
def golden() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@lru_cache(maxsize=1)
def golden_tensors() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "golden_tensors.safetensors")


@lru_cache(maxsize=1)
def tiny_vae() -> CausalVideoVAE:
    """The VAE that produced the golden data: constructor kwargs and weights as recorded."""
    kwargs = golden()["sections"]["weights"][VAE_WEIGHTS_KEY]["constructor_kwargs"]
    vae = CausalVideoVAE.from_config(kwargs).eval()
    vae.load_state_dict(load_file(GOLDEN / f"weights_{VAE_WEIGHTS_KEY}.safetensors"), strict=True)
    return vae


def parse_vae_call(call: str) -> tuple[str, str, dict]:
    """'vae.enable_tiling(); vae.decode(x, temporal_chunk=True, window_size=1, ...)' ->
    ('decode', 'x', {'chunk_size': 1, 'tile_size': ...}) in our API's terms."""
    match = re.search(r"vae\.(encode|decode)\([^()]*\)", call)
    assert match, f"no vae.encode/decode call in {call!r}"
    node = ast.parse(match.group(0), mode="eval").body
    method = match.group(1)
    ref = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    chunk = ref.get("window_size", REFERENCE_DEFAULT_WINDOW[method]) if ref.get("temporal_chunk") else None
    tile = ref.get("tile_sample_min_size", REFERENCE_DEFAULT_TILE) if "enable_tiling" in call else None
    return method, ast.unparse(node.args[0]), {"chunk_size": chunk, "tile_size": tile}


def group_tensor(group: str, name: str) -> str:
    """A tensor named in a call: a full name, or one local to ``vae.<group>``."""
    return name if name in golden()["tensors"] else f"vae.{group}.{name}"


def vae_cases() -> list[tuple[str, str, str]]:
    """(group, key, call) for every recorded VAE call."""
    calls = golden()["sections"]["vae"]["calls"]
    return [
        (group, key, call)
        for group, entries in calls.items()
        if isinstance(entries, dict)
        for key, call in entries.items()
        if isinstance(call, str) and "vae." in call and key != "posterior_sample"
    ]


def expected_outputs(group: str, key: str, call: str) -> dict[str, str]:
    """Stored tensors for one call: attribute of our result -> golden tensor name."""
    tensors = golden()["tensors"]
    if key == "posterior":  # the whole distribution: posterior_mean, posterior_logvar, ...
        names = {attr: f"vae.{group}.posterior_{attr}" for attr in ("mean", "logvar", "std")}
    elif parse_vae_call(call)[0] == "encode":
        attr = re.search(r"latent_dist\.(\w+)", call)
        names = {attr.group(1) if attr else "mean": f"vae.{group}.{key}"}
    else:
        names = {"pixels": f"vae.{group}.{key}"}
    return {attr: name for attr, name in names.items() if name in tensors}


def run_case(group: str, key: str, call: str) -> dict[str, torch.Tensor]:
    method, arg, kwargs = parse_vae_call(call)
    x = golden_tensors()[group_tensor(group, arg)]
    x_before = x.clone()
    with torch.no_grad():
        if method == "encode":
            post = tiny_vae().encode(x, **kwargs)
            result = {"mean": post.mean, "logvar": post.logvar, "std": post.std}
        else:
            result = {"pixels": tiny_vae().decode(x, **kwargs)}
    assert torch.equal(x, x_before), f"{method} modified its input"
    return result


CHECKED: set[str] = set()


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("group,key,call", vae_cases(), ids=lambda v: v if len(v) < 40 else "")
def test_vae_call_matches_reference(group, key, call):
    expected = expected_outputs(group, key, call)
    assert expected, f"no stored tensor for vae.{group}.{key}"
    result = run_case(group, key, call)
    for attr, name in expected.items():
        want = golden_tensors()[name]
        got = result[attr]
        assert got.shape == want.shape, name
        err = (got - want).abs().max().item()
        assert err <= ATOL, f"{name}: max abs error {err:.3g} > {ATOL}"
        CHECKED.add(name)


def test_posterior_sample_uses_callers_generator():
    calls = golden()["sections"]["vae"]["calls"]
    groups = [g for g, entries in calls.items() if isinstance(entries, dict) and "posterior_sample" in entries]
    assert groups, "golden set records no posterior sample"
    for group in groups:
        seed = golden()["tensors"][f"vae.{group}.posterior_sample"]["args"]["generator_seed"]
        _, arg, kwargs = parse_vae_call(calls[group]["posterior"])
        with torch.no_grad():
            post = tiny_vae().encode(golden_tensors()[group_tensor(group, arg)], **kwargs)
        torch.manual_seed(0)  # the global RNG must not matter
        got = post.sample(torch.Generator().manual_seed(seed))
        torch.manual_seed(1)
        again = post.sample(torch.Generator().manual_seed(seed))
        want = golden_tensors()[f"vae.{group}.posterior_sample"]
        assert torch.equal(got, again)
        # The reference drew eps with torch.randn (whose bits depend on the CPU); ours with the
        # portable standard_normal. Same posterior, each with its own eps:
        reference_eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(seed))
        assert (post.mean + post.std * reference_eps - want).abs().max().item() <= ATOL
        eps = standard_normal(post.mean.shape, torch.Generator().manual_seed(seed))
        assert torch.equal(got, post.mean + post.std * eps)
        CHECKED.add(f"vae.{group}.posterior_sample")


def _decode_latent_sections() -> list[str]:
    return [name for name in golden()["sections"] if name.endswith(".decode_latent")]


def _variant_for(shift_scale: dict):
    """The variant in our table whose normalisation the reference run used."""
    for variant in VARIANTS.values():
        if all(
            abs(getattr(variant, f"{kind}_latent_{what}") - shift_scale[f"{kind}_{what}"]) < 1e-9
            for kind in ("image", "video")
            for what in ("shift", "scale")
        ):
            return variant
    raise AssertionError(f"no variant in pyramid_core.variants has latent constants {shift_scale}")


@pytest.mark.parametrize("section", _decode_latent_sections())
def test_decode_latent_matches_reference_frames(section):
    """Pipeline decode: de-normalise per frame, chunked decode, to uint8 like the reference."""
    info = golden()["sections"][section]
    variant = _variant_for(golden()["sections"][section.rsplit(".", 1)[0]]["vae_shift_scale"])
    save_memory = re.search(r"save_memory=(True|False)", info["call"])
    chunk = PIPELINE_DECODE_WINDOW[save_memory is None or save_memory.group(1) == "True"]
    tile = REFERENCE_DEFAULT_TILE if "enable_tiling" in info["call"] else None

    latents = golden_tensors()[info["input"]]
    before = latents.clone()
    vae_latents = denormalize_latents(latents, variant)
    assert torch.equal(latents, before)
    unscaled = f"{section}.unscaled_latents_inplace"
    if unscaled in golden_tensors():
        assert (vae_latents - golden_tensors()[unscaled]).abs().max().item() <= 1e-6

    with torch.no_grad():
        pixels = tiny_vae().decode(vae_latents, chunk_size=chunk, tile_size=tile)
    frames = pixels.mul(127.5).add(127.5).clamp(0, 255).to(torch.uint8)   # (B, 3, T, H, W)
    frames = frames.permute(0, 2, 3, 4, 1).flatten(0, 1)                   # (B*T, H, W, 3)
    want = golden_tensors()[f"{section}.frames_uint8"]
    assert list(frames.shape) == info["output_shape"] == list(want.shape)
    diff = (frames.int() - want.int()).abs()
    # Truncation to uint8 can flip a value that sits on an integer by float rounding.
    assert diff.max().item() <= 1 and (diff > 0).float().mean().item() < 1e-3


def test_every_vae_golden_output_was_checked():
    """Runs last in this file: a regenerated set with a new vae.* output must get a check."""
    outputs = {
        name for name, meta in golden()["tensors"].items()
        if name.startswith("vae.") and not meta.get("produced_by", "").startswith("torch.rand")
    }
    if len(CHECKED) == 0:
        pytest.skip("run with the whole file to check coverage")
    missing = sorted(outputs - CHECKED)
    assert not missing, f"golden VAE outputs with no test: {missing}"
