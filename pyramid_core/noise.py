"""Noise for the pyramid sampler: the initial coarse noise and the block-correlated noise.

Both are drawn from the caller's ``torch.Generator`` (never the global RNG) with
:func:`pyramid_core.rng.standard_normal`, and every later operation is exact or one float64
basic operation in a fixed order, so the same seed gives the same bits on every CPU and GPU;
the requested dtype is applied at the very end.

Block noise is what re-noises a latent after the x2 nearest upsample between two pyramid
stages. Nearest upsampling copies every latent pixel into a 2x2 block, so the four copies
must receive *correlated* noise: each 2x2 block gets a draw of N(0, S) with

    S = (1 + gamma) I - gamma 1 1^T      (4 x 4, one row per pixel of the block)

For gamma = 1/3 (the released models) S is exactly singular: its eigenvalue along 1 is
1 - 3 gamma = 0, so the noise of a block sums to zero and the block's mean, the part the
previous stage already decided, is left alone.

The reference draws this one block at a time through ``MultivariateNormal`` in a Python
loop from the global RNG, factorising S with fp32 LAPACK: at gamma = 1/3 that only works by
rounding (its last diagonal comes out near 4e-4 instead of 0) and fails outright on some
CPUs (AMD EPYC with MKL). Here the factor is the closed form below and the noise is one
draw of N(0, I) of shape (blocks, 4) times it, the same linear map applied to all blocks at
once. Its N(0, I) stream is the one the reference's loop reads from a CPU generator.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch

from .rng import standard_normal

__all__ = [
    "block_noise",
    "block_noise_cholesky",
    "block_noise_covariance",
    "coarsen_noise",
    "initial_noise",
]


def _target_device(device: torch.device | str | None, generator: torch.Generator | None) -> torch.device:
    """``device``, else the generator's device, else the CPU."""
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------
# Block-correlated noise
# --------------------------------------------------------------------------------------

MAX_GAMMA = Fraction(1, 3)


def _exact_gamma(gamma: float) -> Fraction:
    """``gamma`` as an exact fraction; the double nearest 1/3 (how configs store it) means 1/3."""
    gamma = float(gamma)
    if math.isclose(gamma, 1 / 3, rel_tol=0, abs_tol=1e-12):
        return MAX_GAMMA
    if not 0.0 <= gamma <= 1 / 3:
        raise ValueError(
            f"block noise gamma must lie in [0, 1/3] (the covariance is not positive "
            f"semi-definite above 1/3), got {gamma}"
        )
    return Fraction(gamma)


def block_noise_covariance(gamma: float) -> torch.Tensor:
    """The 4x4 covariance ``(1 + gamma) I - gamma 11^T`` of one 2x2 block (fp32, CPU).

    Rows and columns are the block's pixels in row-major order: (0,0), (0,1), (1,0), (1,1).
    """
    return torch.eye(4, dtype=torch.float32) * (1 + gamma) - torch.ones(4, 4, dtype=torch.float32) * gamma


@functools.lru_cache(maxsize=8)
def _cholesky_float64(gamma: Fraction) -> torch.Tensor:
    """The exact lower factor of ``(1 + g) I - g 11^T`` in float64 (each entry within two ulps).

    No LAPACK: the matrix has unit diagonal and off-diagonal ``c = -g``, and every step of
    Cholesky leaves a Schur complement of the same form, with pivot ``d_k`` and off-diagonal
    ``c_k`` (k = 0..3). ``d_k - c_k = 1 + g`` stays fixed and ``1/c_(k+1) = 1/c_k + 1/(1+g)``,
    which gives

        c_k = -g (1 + g) / (1 + (1 - k) g),     d_k = (1 + g)(1 - k g) / (1 + (1 - k) g),
        L[k, k] = sqrt(d_k),                    L[i, k] = c_k / sqrt(d_k)  (i > k).

    The denominators are >= 1 - 2g > 0 on [0, 1/3], and ``d_3`` is exactly 0 at g = 1/3 (the
    singular direction), so L[3, 3] = 0 there instead of LAPACK's rounding residue. ``d_k``
    and ``c_k`` are exact fractions; the square roots and the division are single IEEE
    operations, rounded the same way on every machine.
    """
    lower = torch.zeros(4, 4, dtype=torch.float64)
    for k in range(4):
        denominator = 1 + (1 - k) * gamma
        pivot = (1 + gamma) * (1 - k * gamma) / denominator                # d_k, exact
        off_diagonal = -gamma * (1 + gamma) / denominator                   # c_k, exact
        root = math.sqrt(pivot)                                             # Fraction -> float -> sqrt
        lower[k, k] = root
        if root > 0:
            lower[k + 1:, k] = float(off_diagonal) / root
    return lower


def block_noise_cholesky(gamma: float) -> torch.Tensor:
    """Lower factor ``L`` (4x4, fp32, CPU) with ``L @ L.T == block_noise_covariance(gamma)``.

    The exact factor (closed form, see :func:`_cholesky_float64`) rounded once to fp32. At
    gamma = 1/3 its last row is ``(-1/3, -sqrt(2)/3, -sqrt(2/3), 0)``: each column sums to 0
    up to fp32 rounding, so every block's noise sums to (almost exactly) zero.
    """
    return _cholesky_float64(_exact_gamma(gamma)).to(torch.float32)


def block_noise(
    shape: tuple[int, ...] | torch.Size,
    gamma: float = 1.0 / 3.0,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Noise whose every 2x2 spatial block is N(0, (1 + gamma) I - gamma 11^T).

    Args:
        shape: output shape ``(..., H, W)``, normally ``(B, C, T, H, W)``; H and W even.
        gamma: the scheduler's gamma (1/3 for the released models), in [0, 1/3].
        generator: where the N(0, I) draw comes from (:func:`pyramid_core.rng.standard_normal`);
            ``None`` is torch's global CPU generator, which is what the reference reads.
            From a CPU generator in the state that the reference's global RNG had (e.g.
            ``torch.manual_seed(s)`` there and ``torch.Generator().manual_seed(s)`` here),
            the N(0, I) values are the ones its per-block loop draws, whenever the generator
            holds no cached Box-Muller value (true after ``manual_seed`` and after any draw
            made here); the blocks then differ from the reference's only by its rounded
            factor (see :func:`block_noise_cholesky`).
        device: where the result goes (default: the generator's device, else CPU).
        dtype: dtype of the result; the arithmetic is float64 and the cast comes last.

    Returns:
        ``(..., H, W)`` tensor; block ``(h, w)`` of leading index ``i`` is draw number
        ``i * (H/2) * (W/2) + h * (W/2) + w``, the reference's loop order. The same bits on
        every machine for the same generator state.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"block noise needs a shape (..., H, W), got {shape}")
    height, width = shape[-2:]
    if height % 2 or width % 2 or height <= 0 or width <= 0:
        raise ValueError(f"block noise needs an even, positive height and width (2x2 blocks), got {height}x{width}")
    lower = block_noise_cholesky(gamma).to(torch.float64)
    lead = shape[:-2]
    num_blocks = math.prod(lead) * (height // 2) * (width // 2)
    eps = standard_normal((num_blocks, 4), generator).to(torch.float64)     # (N, 4), fp32 values

    # Row n is L @ eps[n], the product the reference forms per block. Written out in float64
    # in a fixed order instead of a matmul, whose summation order and FMA use depend on the
    # BLAS and the CPU: fp32 x fp32 products are exact in float64, and the one rounding to
    # fp32 happens at the end.
    columns = []
    for row in range(4):
        acc = eps[:, 0] * lower[row, 0]
        for k in range(1, row + 1):
            acc = acc + eps[:, k] * lower[row, k]
        columns.append(acc)
    blocks = torch.stack(columns, dim=-1).to(torch.float32)                # (N, 4)
    blocks = blocks.reshape(*lead, height // 2, width // 2, 2, 2)          # (..., h, w, p, q)
    noise = blocks.movedim(-2, -3).reshape(*lead, height, width)           # (..., h p, w q)
    return noise.to(device=_target_device(device, generator), dtype=dtype)


# --------------------------------------------------------------------------------------
# Initial noise of the coarsest stage
# --------------------------------------------------------------------------------------

def initial_noise(
    shape: tuple[int, ...] | torch.Size,
    num_stages: int = 3,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Unit-variance noise at the coarsest stage, drawn at full latent size and shrunk.

    As in the reference: N(0, I) of the full latent shape ``(B, C, T, H, W)`` from the
    generator, then ``num_stages - 1`` times a x2 bilinear downsample times 2. An exact x2
    bilinear downsample (``align_corners=False``) is the 2x2 mean, so each stage is the sum
    of the block times 1/2, which keeps unit variance. The draw is
    :func:`pyramid_core.rng.standard_normal` (fp32 values) and the sums are float64 in a fixed
    order, rounded to fp32 once, so a seed gives the same bits on every machine. (The
    reference draws with ``torch.randn``, whose bits depend on the CPU; see ``rng``.)

    Args:
        shape: full-resolution latent shape ``(B, C, T, H, W)``; H and W divisible by
            ``2 ** (num_stages - 1)``.
        num_stages: pyramid stages (3 for the released models).
        generator, device, dtype: as in :func:`block_noise`.

    Returns:
        ``(B, C, T, H / 2**(S-1), W / 2**(S-1))`` in ``dtype``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5:
        raise ValueError(f"initial noise needs a latent shape (B, C, T, H, W), got {shape}")
    if num_stages < 1:
        raise ValueError(f"num_stages must be at least 1, got {num_stages}")
    height, width = shape[-2:]
    factor = 2 ** (num_stages - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"latent height and width must be divisible by {factor} for {num_stages} pyramid stages, "
            f"got {height}x{width} (pixel sizes must be multiples of {8 * factor})"
        )
    noise = standard_normal(shape, generator)                               # (B, C, T, H, W)
    return coarsen_noise(noise, num_stages).to(device=_target_device(device, generator), dtype=dtype)


def coarsen_noise(noise: torch.Tensor, num_stages: int = 3) -> torch.Tensor:
    """Full-size unit noise ``(..., H, W)`` -> the coarsest stage's ``(..., H / 2**(S-1), W / 2**(S-1))``.

    ``num_stages - 1`` times the reference's x2 bilinear downsample times 2, i.e. half the
    sum of every 2x2 block (exactly what bilinear does at an exact x2 with
    ``align_corners=False``), in float64 in a fixed order and rounded to fp32 once.
    """
    factor = 2 ** (num_stages - 1)
    if noise.shape[-2] % factor or noise.shape[-1] % factor:
        raise ValueError(f"noise of size {tuple(noise.shape[-2:])} cannot be halved {num_stages - 1} times")
    coarse = noise.to(torch.float64)
    for _ in range(num_stages - 1):
        coarse = (coarse[..., 0::2, 0::2] + coarse[..., 0::2, 1::2] + coarse[..., 1::2, 0::2]
                  + coarse[..., 1::2, 1::2]) * 0.5
    return coarse.to(torch.float32)
