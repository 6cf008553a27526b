"""Portable N(0, 1) draws: the same bits on every machine, and torch's scalar stream."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyramid_core import rng
from pyramid_core.noise import block_noise, initial_noise
from pyramid_core.rng import standard_normal

REPO = Path(__file__).resolve().parents[1]

# sha256 of the fp32 bytes of the draws in _digests(), computed once on an Intel AVX-512
# machine. Any CPU or kernel path that gives other bits fails here.
EXPECTED_DIGESTS = {
    "standard_normal": "0586acd3c7c3ed8be566d843aebe77a7426b7b09815549aeb6790cca3c765790",
    "initial_noise": "7b370a5516cbe0a8c873cdc5c2a1588d570a27495f8236d1fdb0dc87cd12620d",
    "block_noise": "2f5709c5a4eca22e38759b2fe82d43c61548bb5ecdd3e4450c1f5c929b011ce3",
}


def _digests() -> dict[str, str]:
    draws = {
        "standard_normal": standard_normal((3, 1001), torch.Generator().manual_seed(20241129)),
        "initial_noise": initial_noise((1, 16, 3, 24, 40), generator=torch.Generator().manual_seed(7)),
        "block_noise": block_noise((1, 16, 2, 12, 20), 1 / 3, generator=torch.Generator().manual_seed(8)),
    }
    return {name: hashlib.sha256(value.numpy().tobytes()).hexdigest() for name, value in draws.items()}


def test_the_same_bits_as_on_the_machine_that_recorded_them():
    assert _digests() == EXPECTED_DIGESTS


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_the_same_bits_under_every_cpu_kernel_path(capability):
    """torch.randn's bits change with ATEN_CPU_CAPABILITY (AVX2 and AVX-512 builds use
    vectorised fp32 log/cos/sin, the default path libm); ours must not. A capability the CPU
    lacks falls back to the best it has, which proves nothing new but is no failure."""
    code = "import json, sys; sys.path.insert(0, 'tests'); import test_rng; print(json.dumps(test_rng._digests()))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == EXPECTED_DIGESTS


def _uniforms(count: int, seed: int) -> torch.Tensor:
    words = torch.empty(count, dtype=torch.int64).random_(-(2**63), None, generator=torch.Generator().manual_seed(seed))
    return (words & ((1 << 53) - 1)).to(torch.float64) * 2.0**-53


def _ulp_errors(ours: torch.Tensor, exact: list[float]) -> float:
    """Largest |ours - exact| in float64 ulps of the exact value."""
    return max(abs(a - b) / math.ulp(b) if b else abs(a) / math.ulp(1.0) for a, b in zip(ours.tolist(), exact))


def test_log_and_sincos_are_accurate_to_a_few_float64_ulps():
    """Against libm (itself within 1 ulp): 4 ulps of float64 are 2^29 times finer than fp32."""
    u = torch.cat([_uniforms(20000, 1), torch.tensor([0.0, 2.0**-53, 0.5, 0.25, 0.125, 1 - 2.0**-53],
                                                    dtype=torch.float64)])
    x = 1 - u
    assert _ulp_errors(rng._log_unit(x), [math.log(v) for v in x.tolist()]) <= 4
    cos_t, sin_t = rng._cos_sin_turns(u)
    angles = [2 * math.pi * v for v in u.tolist()]
    # Absolute errors (what a Box-Muller value feels near the zeros of cos and sin). The
    # oracle's own angle 2 pi u is rounded, by up to 2 pi 2^-53 (ours reduces u exactly first).
    bound = (2 * math.pi + 4) * 2.0**-53
    assert (cos_t - torch.tensor([math.cos(a) for a in angles], dtype=torch.float64)).abs().max() <= bound
    assert (sin_t - torch.tensor([math.sin(a) for a in angles], dtype=torch.float64)).abs().max() <= bound
    assert rng._log_unit(torch.tensor([1.0], dtype=torch.float64)).item() == 0.0
    assert rng._cos_sin_turns(torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=torch.float64)) == (
        pytest.approx([1, 0, -1, 0], abs=1e-16), pytest.approx([0, 1, 0, -1], abs=1e-16))


def test_the_stream_is_torchs_scalar_cpu_sampler():
    """The reference's MultivariateNormal loop draws 4 values at a time with normal_(), whose
    CPU path below 16 elements is double Box-Muller with libm. Ours uses series instead of
    libm, so a value can differ by one fp32 ulp where it lies within a float64 ulp of an
    fp32 rounding boundary (about 1 in 2^28 values); otherwise the bits are the same."""
    generator = torch.Generator().manual_seed(31)
    theirs = torch.cat([torch.empty(4).normal_(generator=generator) for _ in range(5000)])
    ours = standard_normal((5000, 4), torch.Generator().manual_seed(31)).flatten()
    one_ulp = torch.finfo(torch.float32).eps * theirs.abs()
    assert ((ours - theirs).abs() <= one_ulp).all()
    assert (ours == theirs).float().mean() > 0.999


def test_pieces_of_a_draw_are_the_draw():
    whole = standard_normal((6, 7), torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    first, second = standard_normal((2, 7), generator), standard_normal((4, 7), generator)
    assert torch.equal(torch.cat([first, second]), whole)


def test_chunks_are_invisible(monkeypatch):
    whole = standard_normal((1001,), torch.Generator().manual_seed(4))
    monkeypatch.setattr(rng, "_CHUNK_PAIRS", 7)
    assert torch.equal(standard_normal((1001,), torch.Generator().manual_seed(4)), whole)


def test_moments_shape_dtype_and_device():
    values = standard_normal((200, 1000), torch.Generator().manual_seed(5))
    assert values.shape == (200, 1000) and values.dtype == torch.float32 and values.device.type == "cpu"
    assert abs(values.mean().item()) < 0.01 and abs(values.var().item() - 1) < 0.01
    assert abs(((values.double() ** 4).mean() - 3).item()) < 0.05                    # Gaussian kurtosis
    assert standard_normal((0, 3)).shape == (0, 3)
    half = standard_normal((5,), torch.Generator().manual_seed(6), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, standard_normal((5,), torch.Generator().manual_seed(6)).to(torch.bfloat16))


def test_negative_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        standard_normal((2, -1))
