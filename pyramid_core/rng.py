"""Standard normal draws that are bit-identical on every machine for the same generator state.

Why not ``torch.randn``: its CPU kernel takes a different path per instruction set (AVX2 and
AVX-512 builds use vectorised single-precision log/cos/sin, other CPUs -- ARM, or
``ATEN_CPU_CAPABILITY=default`` -- use libm), so one seed gives values that differ in their
last bits on about 4 in 10 elements (measured: up to 2.3e-6 over 1e6 draws). A seed shared in
a workflow must give the same video on a Mac, an AMD and an Intel machine.

Here every operation is either exact or one IEEE-754 basic operation (``+ - * /`` and
``sqrt``), which every CPU and GPU rounds the same way (correctly); no library
transcendental, no fused multiply-add, no reduction whose order depends on threads. The
logarithm, sine and cosine are series evaluated in float64 far below fp32 resolution, and
each value is rounded to fp32 once at the end.

The construction is that of torch's scalar CPU sampler (``normal_`` on fewer than 16
elements, which is what the reference's one-block-at-a-time ``MultivariateNormal`` loop
reads): every pair of values takes two 64-bit words ``w1, w2`` from the generator,
``u = (w & (2^53 - 1)) * 2^-53``, ``r = sqrt(-2 log(1 - u2))`` and the values are
``r cos(2 pi u1)``, ``r sin(2 pi u1)`` in that order. On a CPU generator the stream is
therefore the one the reference loop draws (to within the last fp32 bit of libm's rounding).
"""

from __future__ import annotations

import math

import torch

__all__ = ["standard_normal"]

_MANTISSA_53 = (1 << 53) - 1
_CHUNK_PAIRS = 1 << 15          # 2^16 values at a time: the float64 temporaries stay in the CPU's cache

# ln 2 split so that e * _LN2_HI is exact for |e| < 2^20 (fdlibm's constants).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
# atanh series: log f = 2 s (1 + s^2/3 + s^4/5 + ...), s = (f-1)/(f+1), |s| <= 0.1716 for
# f in [sqrt(1/2), sqrt(2)): the term s^24/25 is below 2^-60 relative.
_ATANH = [1.0 / (2 * k + 1) for k in range(12)]
# Taylor series of sin a / a and cos a in w = a^2 for |a| <= pi/4: the first omitted terms
# (a^20/20!, a^21/21!) are below 2^-60.
_SIN = [(-1) ** k / math.factorial(2 * k + 1) for k in range(10)]
_COS = [(-1) ** k / math.factorial(2 * k) for k in range(10)]
_QUARTER_COS = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64)
_QUARTER_SIN = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64)


def _horner(coefficients: list[float], w: torch.Tensor) -> torch.Tensor:
    """sum_k c_k w^k with separate multiplies and adds (never an FMA: each step rounds the same everywhere)."""
    acc = torch.full_like(w, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        acc.mul_(w).add_(c)                                   # in place: ~10x faster than new tensors
    return acc


def _log_unit(x: torch.Tensor) -> torch.Tensor:
    """Natural log of float64 ``x`` in (0, 1] (``x = 1 - u``, exact), to a few float64 ulps."""
    mantissa, exponent = torch.frexp(x)                       # x = m 2^e, m in [0.5, 1): exact
    low = mantissa < math.sqrt(0.5)
    mantissa = torch.where(low, mantissa * 2, mantissa)       # m in [sqrt(1/2), sqrt(2)): exact
    exponent = (exponent - low.to(exponent.dtype)).to(torch.float64)
    s = (mantissa - 1) / (mantissa + 1)                       # m - 1 is exact (Sterbenz)
    log_m = (s * 2) * _horner(_ATANH, s * s)
    return exponent * _LN2_HI + (log_m + exponent * _LN2_LO)


def _cos_sin_turns(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos 2 pi u, sin 2 pi u)`` for float64 ``u`` in [0, 1) holding at most 53 fraction bits."""
    quadrant = torch.round(u * 4)                             # 0..4, exact
    t = u - quadrant * 0.25                                   # in [-1/8, 1/8], exact (same 2^-53 grid)
    a = t * (2 * math.pi)                                     # |a| <= pi/4; the angle is a + q pi/2
    w = a * a
    sin_a = a * _horner(_SIN, w)
    cos_a = _horner(_COS, w)
    q = quadrant.to(torch.int64) & 3
    rot_cos, rot_sin = _QUARTER_COS[q], _QUARTER_SIN[q]       # cos, sin of q pi/2: 0 or +-1
    # Rotating by q pi/2: products with 0 and +-1 and sums with +-0 are exact.
    return cos_a * rot_cos - sin_a * rot_sin, sin_a * rot_cos + cos_a * rot_sin


def _pairs(words: torch.Tensor) -> torch.Tensor:
    """(2n,) int64 generator words -> (2n,) float64 normals: Box-Muller on consecutive word pairs."""
    uniform = (words & _MANTISSA_53).to(torch.float64) * 2.0**-53        # exact: 53-bit integers
    u1, u2 = uniform[0::2], uniform[1::2]
    radius = torch.sqrt(_log_unit(1 - u2) * -2.0)                        # 1 - u2 is exact
    cos_t, sin_t = _cos_sin_turns(u1)
    return torch.stack([radius * cos_t, radius * sin_t], dim=-1).reshape(-1)


def standard_normal(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N(0, 1) values of ``shape``, the same bits on every machine for the same generator state.

    Args:
        shape: any shape; values fill it in row-major order.
        generator: where the 64-bit words come from (one per value); ``None`` is torch's
            global CPU generator. A CPU generator is what makes results portable: CUDA
            generators have a stream of their own.
        device: where the result goes (default: the generator's device, else CPU). The
            arithmetic runs on the CPU in float64 whatever the device.
        dtype: the values are rounded to fp32 once, then cast to ``dtype``.

    Returns:
        A tensor of ``shape`` in ``dtype`` on ``device``. Drawing it in pieces of any
        sizes from a CPU generator gives the same values as one draw.
    """
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"standard_normal needs a non-negative shape, got {shape}")
    if generator is None:
        generator = torch.default_generator
    count = math.prod(shape)
    pairs = (count + 1) // 2
    chunks = []
    for start in range(0, pairs, _CHUNK_PAIRS):
        size = min(_CHUNK_PAIRS, pairs - start)
        words = torch.empty(2 * size, dtype=torch.int64, device=generator.device)
        words.random_(-(2**63), None, generator=generator)               # the full 64-bit range
        chunks.append(_pairs(words.cpu()).to(torch.float32))
    values = torch.cat(chunks) if chunks else torch.empty(0)
    target = torch.device(device) if device is not None else generator.device
    return values[:count].reshape(shape).to(device=target, dtype=dtype)
