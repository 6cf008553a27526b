"""Noise for the pyramid sampler: the initial coarse noise and the block-correlated noise.

Both are drawn from the caller's ``torch.Generator`` (never the global RNG) and computed in
fp32; the requested dtype is applied at the very end.

Block noise is what re-noises a latent after the x2 nearest upsample between two pyramid
stages. Nearest upsampling copies every latent pixel into a 2x2 block, so the four copies
must receive *correlated* noise: each 2x2 block gets a draw of N(0, S) with

    S = (1 + gamma) I - gamma 1 1^T      (4 x 4, one row per pixel of the block)

For gamma = 1/3 (the released models) S is singular: its eigenvalue along 1 is
1 - 3 gamma = 0, so the noise of a block sums to (almost) zero and the block's mean, the
part the previous stage already decided, is left alone.

The reference draws this one block at a time through ``MultivariateNormal`` in a Python
loop from the global RNG. Here it is one draw of N(0, I) of shape (blocks, 4) times the
Cholesky factor, i.e. the same linear map applied to all blocks at once.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "block_noise",
    "block_noise_cholesky",
    "block_noise_covariance",
    "initial_noise",
]


# --------------------------------------------------------------------------------------
# Block-correlated noise
# --------------------------------------------------------------------------------------

def block_noise_covariance(gamma: float) -> torch.Tensor:
    """The 4x4 covariance ``(1 + gamma) I - gamma 11^T`` of one 2x2 block (fp32, CPU).

    Rows and columns are the block's pixels in row-major order: (0,0), (0,1), (1,0), (1,1).
    """
    return torch.eye(4, dtype=torch.float32) * (1 + gamma) - torch.ones(4, 4, dtype=torch.float32) * gamma


@functools.lru_cache(maxsize=8)
def _cholesky_cpu(gamma: float) -> torch.Tensor:
    if not 0.0 <= gamma <= 1.0 / 3.0 + 1e-12:
        raise ValueError(
            f"block noise gamma must lie in [0, 1/3] (the covariance is not positive "
            f"semi-definite above 1/3), got {gamma}"
        )
    # fp32 on the CPU, always: for gamma = 1/3 the covariance is singular and only the
    # rounding of fp32 LAPACK lets the factorisation through (last diagonal ~4e-4, exactly
    # what the reference gets); fp16 fails and other backends may round differently.
    lower, info = torch.linalg.cholesky_ex(block_noise_covariance(gamma))
    if info.item() != 0:
        raise ValueError(f"block noise covariance for gamma={gamma} has no Cholesky factor")
    return lower


def block_noise_cholesky(gamma: float) -> torch.Tensor:
    """Lower Cholesky factor ``L`` (4x4, fp32, CPU) with ``L @ L.T == block_noise_covariance(gamma)``."""
    return _cholesky_cpu(float(gamma)).clone()


def _standard_normal_like_reference(num_blocks: int, generator: torch.Generator) -> torch.Tensor:
    """(num_blocks, 4) fp32 N(0, 1) values, the exact stream of 4-element CPU ``normal_()``.

    ``MultivariateNormal.sample()`` draws its 4 values with ``torch.empty(4).normal_()``;
    below 16 elements the CPU kernel takes its serial path: for each pair of values it
    takes two 64-bit words from the Mersenne Twister, turns them into doubles u1, u2 in
    [0, 1) with 53 random bits, and applies Box-Muller in double precision,
    ``r = sqrt(-2 log1p(-u2))``, returning ``r cos(2 pi u1)`` then ``r sin(2 pi u1)``,
    each rounded to fp32. ``random_`` over the full int64 range hands out exactly those
    64-bit words (also serially), so the whole stream can be rebuilt in one vectorised go.
    """
    words = torch.empty(num_blocks * 4, dtype=torch.int64).random_(-(2**63), None, generator=generator)
    uniform = (words & ((1 << 53) - 1)).to(torch.float64) * 2.0**-53   # (2 * blocks * 2,)
    u1, u2 = uniform[0::2], uniform[1::2]                                # one pair per 2 values
    radius = torch.sqrt(-2.0 * torch.log1p(-u2))
    theta = 2.0 * math.pi * u1
    pairs = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], dim=-1)
    return pairs.reshape(num_blocks, 4).to(torch.float32)


def block_noise(
    shape: tuple[int, ...] | torch.Size,
    gamma: float = 1.0 / 3.0,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    match_reference_rng: bool = False,
) -> torch.Tensor:
    """Noise whose every 2x2 spatial block is N(0, (1 + gamma) I - gamma 11^T).

    Args:
        shape: output shape ``(..., H, W)``, normally ``(B, C, T, H, W)``; H and W even.
        gamma: the scheduler's gamma (1/3 for the released models), in [0, 1/3].
        generator: where the N(0, I) draw comes from; its device is where it is drawn.
            ``None`` uses torch's default generator of ``device``.
        device: where the result goes (default: the generator's device, else CPU).
        dtype: dtype of the result; all arithmetic is fp32 and the cast comes last.
        match_reference_rng: rebuild, still vectorised, the exact values that the
            reference's one-block-at-a-time ``MultivariateNormal`` loop draws from a CPU
            generator in the same state (e.g. ``torch.manual_seed(s)`` there and
            ``torch.Generator().manual_seed(s)`` here). Needs a CPU generator (or ``None``,
            the global CPU RNG, which is what the reference reads). Exact whenever the
            generator holds no cached Box-Muller value (true after ``manual_seed`` and
            after vectorised draws). Slower than the default path; the default path uses
            ``torch.randn`` and matches the reference in distribution only.

    Returns:
        ``(..., H, W)`` tensor; block ``(h, w)`` of leading index ``i`` is draw number
        ``i * (H/2) * (W/2) + h * (W/2) + w``, the reference's loop order.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"block noise needs a shape (..., H, W), got {shape}")
    height, width = shape[-2:]
    if height % 2 or width % 2 or height <= 0 or width <= 0:
        raise ValueError(f"block noise needs an even, positive height and width (2x2 blocks), got {height}x{width}")
    lead = shape[:-2]
    num_blocks = math.prod(lead) * (height // 2) * (width // 2)
    lower = _cholesky_cpu(float(gamma))

    if match_reference_rng:
        if generator is None:
            generator = torch.default_generator
        if generator.device.type != "cpu":
            raise ValueError("match_reference_rng reproduces the reference's CPU RNG stream: pass a CPU generator")
        eps = _standard_normal_like_reference(num_blocks, generator)     # (N, 4)
    else:
        draw_device = generator.device if generator is not None else torch.device(device or "cpu")
        eps = torch.randn((num_blocks, 4), generator=generator, device=draw_device, dtype=torch.float32)

    # One matmul for all blocks: row n is L @ eps[n], the same product the reference forms
    # per block (and bit-identical to it on the CPU).
    blocks = eps @ lower.to(eps.device).T                                 # (N, 4)
    blocks = blocks.reshape(*lead, height // 2, width // 2, 2, 2)         # (..., h, w, p, q)
    noise = blocks.movedim(-2, -3).reshape(*lead, height, width)          # (..., h p, w q)
    target = torch.device(device) if device is not None else eps.device
    return noise.to(device=target, dtype=dtype)


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
    generator, then ``num_stages - 1`` times a x2 bilinear downsample times 2 (a 2x2 mean
    scaled back to unit variance). The draw is one ``torch.randn`` in fp32 on the
    generator's device, so with the same seed the values equal the reference's fp32 run.

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
    batch, channels, frames, height, width = shape
    factor = 2 ** (num_stages - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"latent height and width must be divisible by {factor} for {num_stages} pyramid stages, "
            f"got {height}x{width} (pixel sizes must be multiples of {8 * factor})"
        )
    draw_device = generator.device if generator is not None else torch.device(device or "cpu")
    noise = torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32)
    # Bilinear acts per plane, so (B, C*T, H, W) is the same as the reference's (B*T, C, H, W).
    planes = noise.reshape(batch, channels * frames, height, width)
    for _ in range(num_stages - 1):
        height, width = height // 2, width // 2
        planes = F.interpolate(planes, size=(height, width), mode="bilinear") * 2
    noise = planes.reshape(batch, channels, frames, height, width)
    target = torch.device(device) if device is not None else draw_device
    return noise.to(device=target, dtype=dtype)
