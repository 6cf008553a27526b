"""The pyramid flow-matching Euler scheduler, with the stage-transition re-noise.

Pyramid Flow splits one flow (sigma 1 = noise -> 0 = data) into ``num_stages`` pieces,
each run at twice the resolution of the one before:

* On the global training grid ``sigma_i = shift * s / (1 + (shift - 1) s)`` with
  ``s = (1000 - i) / 1000``, stage k covers ``stage_range[k] .. stage_range[k+1]`` of the
  grid: it ends at ``end_sigmas[k]`` (0 for the last stage) and would start at
  ``ori_start_sigmas[k]``, the previous stage's end.
* Entering stage k > 0 the latent is upsampled x2 (nearest) and re-noised with block
  noise (:func:`stage_transition`). Re-noising adds noise, so the stage really starts at the
  gamma-corrected ``start_sigmas[k] > ori_start_sigmas[k]``.
* The 0-1000 timestep range is shared between stages in proportion to the distance in
  sigma each stage covers (``timestep_ratios``); the DiT sees timesteps from that split.
* Inside a stage the Euler sigmas are local: ``linspace(1, 0.001, n)`` then 0, so every
  stage runs its own 1 -> 0 flow and its last step moves 0.001.

Every table reproduces the reference scheduler value for value (including its float32
global grid and truncating ``int()`` indices); ``step`` is the Euler update in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .noise import block_noise

__all__ = [
    "PyramidFlowScheduler",
    "StageTables",
    "compute_stage_tables",
    "corrected_start_sigma",
    "renoise_coefficients",
    "stage_transition",
    "upsample_nearest_2x",
]


# --------------------------------------------------------------------------------------
# Tables (pure functions)
# --------------------------------------------------------------------------------------

def _linspace64(start: float, stop: float, num: int) -> torch.Tensor:
    """``numpy.linspace`` in float64 (``start + i * step``, last value exactly ``stop``).

    ``torch.linspace`` rounds differently (it counts back from ``stop`` in the second
    half), which would move the tables by an ulp from the reference's numpy ones.
    """
    values = torch.arange(num, dtype=torch.float64)
    if num > 1:
        values = values * ((stop - start) / (num - 1)) + start
        values[-1] = stop
    else:
        values = values + start
    return values


def _global_sigmas(num_train_timesteps: int, shift: float) -> torch.Tensor:
    """The shift-warped training grid 1 .. 1/N (float32, as the reference computes it)."""
    grid = torch.arange(num_train_timesteps, 0, -1, dtype=torch.float32) / num_train_timesteps
    return shift * grid / (1 + (shift - 1) * grid)


@dataclass(frozen=True)
class StageTables:
    """Per-stage constants of the pyramid schedule (all python floats, index = stage)."""

    start_sigmas: tuple[float, ...]        # gamma-corrected start (after re-noising)
    end_sigmas: tuple[float, ...]          # 0 for the last stage
    ori_start_sigmas: tuple[float, ...]    # start before correction = previous stage's end
    timestep_ratios: tuple[tuple[float, float], ...]   # share of the 0..1 timestep range
    global_sigmas: torch.Tensor            # (N,) float32 training grid
    stage_timesteps: tuple[torch.Tensor, ...]          # (N,) float64 per stage, 0..1000 scale


def corrected_start_sigma(ori_start_sigma: float, gamma: float) -> float:
    """Noise level right after re-noising a latent whose noise level was ``ori_start_sigma``."""
    signal = 1 - ori_start_sigma
    alpha, _ = _renoise_alpha_beta(signal, gamma)
    return 1 - alpha * signal


def _renoise_alpha_beta(signal: float, gamma: float) -> tuple[float, float]:
    # Upsampled latent: signal * x + (1 - signal) * n with n copied over 2x2 blocks.
    # alpha rescales it and beta adds block noise so that the noise part becomes again
    # (almost) independent per pixel with the variance of a plain flow point.
    alpha = 1 / (math.sqrt(1 + 1 / gamma) * (1 - signal) + signal)
    beta = alpha * (1 - signal) / math.sqrt(gamma)
    return alpha, beta


def compute_stage_tables(
    num_train_timesteps: int = 1000,
    shift: float = 1.0,
    stage_range: Sequence[float] = (0.0, 1 / 3, 2 / 3, 1.0),
    gamma: float = 1 / 3,
) -> StageTables:
    """Start/end sigmas, timestep split and per-stage timestep grids of the pyramid."""
    _check_config(num_train_timesteps, shift, stage_range, gamma)
    n = num_train_timesteps
    num_stages = len(stage_range) - 1
    sigmas = _global_sigmas(n, shift)
    timesteps = sigmas * n

    start_sigmas, end_sigmas, ori_start_sigmas = [], [], []
    for k in range(num_stages):
        first = max(int(stage_range[k] * n), 0)
        last = min(int(stage_range[k + 1] * n), n)
        ori_start = sigmas[first].item()
        end = sigmas[last].item() if last < n else 0.0
        start = ori_start if k == 0 else corrected_start_sigma(ori_start, gamma)
        ori_start_sigmas.append(ori_start)
        start_sigmas.append(start)
        end_sigmas.append(end)

    # Each stage gets a share of the timestep range proportional to the sigma it covers.
    distances = [s - e for s, e in zip(start_sigmas, end_sigmas)]
    total = sum(distances)
    ratios = []
    for k in range(num_stages):
        lo = 0.0 if k == 0 else sum(distances[:k]) / total
        hi = 1.0 if k == num_stages - 1 else sum(distances[: k + 1]) / total
        ratios.append((lo, hi))

    stage_timesteps = []
    for lo, hi in ratios:
        t_max = timesteps[int(lo * n)].item()
        t_min = timesteps[min(int(hi * n), n - 1)].item()
        stage_timesteps.append(_linspace64(t_max, t_min, n + 1)[:-1])

    return StageTables(
        start_sigmas=tuple(start_sigmas),
        end_sigmas=tuple(end_sigmas),
        ori_start_sigmas=tuple(ori_start_sigmas),
        timestep_ratios=tuple(ratios),
        global_sigmas=sigmas,
        stage_timesteps=tuple(stage_timesteps),
    )


def _check_config(num_train_timesteps: int, shift: float, stage_range: Sequence[float], gamma: float) -> None:
    if int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps}")
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift}")
    if len(stage_range) < 2:
        raise ValueError(f"stage_range needs at least two bounds (one stage), got {list(stage_range)}")
    if stage_range[0] != 0 or stage_range[-1] != 1 or any(b <= a for a, b in zip(stage_range, stage_range[1:])):
        raise ValueError(f"stage_range must rise strictly from 0 to 1, got {list(stage_range)}")
    if not 0 < gamma <= 1 / 3 + 1e-12:
        raise ValueError(f"gamma must lie in (0, 1/3], got {gamma}")


# --------------------------------------------------------------------------------------
# Stage transition (pure functions)
# --------------------------------------------------------------------------------------

def renoise_coefficients(ori_start_sigma: float, gamma: float) -> tuple[float, float]:
    """``(alpha, beta)`` for entering a stage: ``latents = alpha * upsampled + beta * block_noise``.

    ``ori_start_sigma`` is the noise level of the upsampled latent (the new stage's
    ``ori_start_sigmas[k]``, equal to the previous stage's end sigma).
    """
    return _renoise_alpha_beta(1 - ori_start_sigma, gamma)


def upsample_nearest_2x(latents: torch.Tensor) -> torch.Tensor:
    """x2 nearest upsample of the two last (spatial) dims; ``(B, C, T, H, W) -> (B, C, T, 2H, 2W)``."""
    return latents.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def stage_transition(
    latents: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    *,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Upsample a finished stage's latents x2 and re-noise them for the next stage.

    ``alpha * upsample(latents) + beta * block_noise`` in fp32, returned in the dtype of
    ``latents``. With ``noise`` given (e.g. recorded reference noise) nothing is drawn;
    otherwise block noise comes from ``generator`` (see :func:`pyramid_core.noise.block_noise`).

    Args:
        latents: ``(B, C, T, H, W)`` at the finished stage's resolution.
        alpha, beta: from :func:`renoise_coefficients` / ``PyramidFlowScheduler.renoise_coefficients``.
        gamma: block-noise correlation (the scheduler's gamma).
        noise: optional ``(B, C, T, 2H, 2W)`` block noise to use instead of drawing.

    Returns:
        ``(B, C, T, 2H, 2W)`` in ``latents.dtype`` on ``latents.device``.
    """
    if latents.ndim != 5:
        raise ValueError(f"stage_transition expects latents (B, C, T, H, W), got shape {tuple(latents.shape)}")
    upsampled = upsample_nearest_2x(latents.to(torch.float32))                # (B, C, T, 2H, 2W)
    if noise is None:
        noise = block_noise(upsampled.shape, gamma, generator=generator, device=latents.device)
    elif noise.shape != upsampled.shape:
        raise ValueError(f"injected block noise has shape {tuple(noise.shape)}, expected {tuple(upsampled.shape)}")
    renoised = alpha * upsampled + beta * noise.to(device=latents.device, dtype=torch.float32)
    return renoised.to(latents.dtype)


# --------------------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------------------

class PyramidFlowScheduler:
    """Pyramid flow-matching Euler scheduler (tables + ``set_timesteps`` + ``step``).

    Usage, per stage ``k``::

        scheduler.set_timesteps(num_steps, k)
        if k > 0:
            alpha, beta = scheduler.renoise_coefficients(k)
            latents = stage_transition(latents, alpha, beta, scheduler.gamma, generator=g)
        for t in scheduler.timesteps:               # 0..1000 scale, float64
            v = dit(latents, t)                     # the velocity (noise - data)
            latents = scheduler.step(v, t, latents)

    Args:
        num_train_timesteps: size of the training grid (1000).
        shift: SD3-style timestep shift of the global grid (1.0 for the released models).
        stage_range: stage bounds on the training grid, from 0 to 1.
        gamma: block-noise correlation used by the re-noise correction (1/3).
    """

    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        stage_range: Sequence[float] = (0.0, 1 / 3, 2 / 3, 1.0),
        gamma: float = 1 / 3,
    ):
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)
        self.stage_range = tuple(float(b) for b in stage_range)
        self.gamma = float(gamma)
        tables = compute_stage_tables(self.num_train_timesteps, self.shift, self.stage_range, self.gamma)
        self.tables = tables
        self.start_sigmas = tables.start_sigmas
        self.end_sigmas = tables.end_sigmas
        self.ori_start_sigmas = tables.ori_start_sigmas
        self.timestep_ratios = tables.timestep_ratios
        # Local Euler sigmas of every stage on the training grid: 1 .. 1/N (float64).
        self.stage_sigmas = _linspace64(1.0, 0.0, self.num_train_timesteps + 1)[:-1]

        self.stage_index: int | None = None
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.step_index: int | None = None

    @classmethod
    def from_variant(cls, variant) -> "PyramidFlowScheduler":
        """Build the scheduler of a :class:`pyramid_core.variants.Variant`."""
        return cls(shift=variant.timestep_shift, stage_range=variant.stage_range, gamma=variant.scheduler_gamma)

    @property
    def num_stages(self) -> int:
        return len(self.stage_range) - 1

    @property
    def config(self) -> dict:
        return dict(num_train_timesteps=self.num_train_timesteps, shift=self.shift,
                    stage_range=list(self.stage_range), gamma=self.gamma)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config.items())})"

    def _check_stage(self, stage_index: int) -> int:
        if isinstance(stage_index, bool) or int(stage_index) != stage_index or not 0 <= stage_index < self.num_stages:
            raise ValueError(f"stage_index must be an integer in [0, {self.num_stages - 1}], got {stage_index!r}")
        return int(stage_index)

    # -- tables for one stage ------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, stage_index: int,
                      device: torch.device | str | None = None) -> None:
        """Prepare ``num_inference_steps`` Euler steps of stage ``stage_index``.

        Sets ``timesteps`` (n, float64, 0-1000 scale, what the DiT receives) and ``sigmas``
        (n + 1, float64: ``linspace(1, 0.001, n)`` then 0) and resets the step counter.
        """
        stage_index = self._check_stage(stage_index)
        if isinstance(num_inference_steps, bool) or int(num_inference_steps) != num_inference_steps \
                or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        n = int(num_inference_steps)
        grid = self.tables.stage_timesteps[stage_index]
        self.timesteps = _linspace64(grid[0].item(), grid[-1].item(), n).to(device)
        sigmas = _linspace64(self.stage_sigmas[0].item(), self.stage_sigmas[-1].item(), n)
        self.sigmas = torch.cat([sigmas, sigmas.new_zeros(1)]).to(device)
        self.stage_index = stage_index
        self.step_index = 0

    def renoise_coefficients(self, stage_index: int) -> tuple[float, float]:
        """``(alpha, beta)`` of the re-noise that enters stage ``stage_index`` (> 0)."""
        stage_index = self._check_stage(stage_index)
        if stage_index == 0:
            raise ValueError("stage 0 starts from pure noise: there is no re-noise into it")
        return renoise_coefficients(self.ori_start_sigmas[stage_index], self.gamma)

    # -- one Euler step ------------------------------------------------------------------

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One Euler step: ``sample + (sigma_next - sigma) * model_output`` in fp32.

        Args:
            model_output: the predicted velocity, same shape as ``sample``.
            timestep: the current entry of ``timesteps`` (a float, or a float tensor of it,
                e.g. expanded over the batch). It only guards against misuse: it must be a
                float and match the current step (up to bf16 rounding).
            sample: the current latents.
            generator: accepted for interface symmetry; the Euler step draws nothing.

        Returns:
            The latents after the step, in ``sample.dtype``.
        """
        if self.timesteps is None:
            raise ValueError("call set_timesteps(num_inference_steps, stage_index) before step()")
        if self.step_index >= len(self.timesteps):
            raise ValueError(
                f"all {len(self.timesteps)} steps of stage {self.stage_index} are done; "
                "call set_timesteps() for the next stage before stepping again"
            )
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} does not match "
                             f"sample shape {tuple(sample.shape)}")
        self._check_timestep(timestep)

        sigma = self.sigmas[self.step_index].item()
        sigma_next = self.sigmas[self.step_index + 1].item()
        prev_sample = sample.to(torch.float32) + (sigma_next - sigma) * model_output.to(torch.float32)
        self.step_index += 1
        return prev_sample.to(sample.dtype)

    def _check_timestep(self, timestep: float | torch.Tensor) -> None:
        if isinstance(timestep, bool) or isinstance(timestep, int) or (
                isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError(
                "step() takes the timestep value from scheduler.timesteps (a float), not an integer "
                "index such as the one from enumerate(timesteps)"
            )
        values = torch.as_tensor(timestep, dtype=torch.float64).detach().cpu().reshape(-1)
        expected = self.timesteps[self.step_index].item()
        # Loose on purpose: the DiT's timestep is often cast to bf16 (relative error 2^-9).
        tolerance = max(1.0, abs(expected) * 2.0**-7)
        if values.numel() == 0 or (values - expected).abs().max().item() > tolerance:
            raise ValueError(
                f"timestep {values.tolist()[:4]} is not step {self.step_index} of stage {self.stage_index} "
                f"(expected {expected:.4f} on the 0-{self.num_train_timesteps} scale); pass the values of "
                "scheduler.timesteps in order after set_timesteps()"
            )

    def __len__(self) -> int:
        return self.num_train_timesteps
