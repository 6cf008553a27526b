"""The pyramidal flow-matching objective: from clean latents to DiT inputs, targets and loss.

One training batch of ``N = b * S`` clean latents is split into ``S`` *columns* (``S`` =
``sum(sample_ratios)``); column ``s`` takes rows ``s, s + S, s + 2S, ...`` and trains one
pyramid stage (``sample_ratios = (1, 2, 1)`` gives stages ``0, 1, 1, 2``). For a column at
stage ``k``, with the clean latent ``x_k`` at that stage's resolution (the full latent halved
``K - 1 - k`` times, bilinear) and ``n_k`` the shared noise at that resolution::

    start = n_0                                               (k = 0)
    start = s_k * n_k + (1 - s_k) * up(x_{k-1})               (k > 0, nearest x2 upsample)
    end   = e_k * n_k + (1 - e_k) * x_k                       (e_K-1 = 0: end = x)
    noisy = r * start + (1 - r) * end,   target = start - end (the velocity the DiT predicts)

``s_k``/``e_k`` are the scheduler's *gamma-corrected* start and end sigmas, so a training
start point has the noise level the sampler reaches after its block-noise re-noise. ``r`` is
the stage-local sigma ``1 - i/1000`` of a timestep index ``i`` drawn per sample; the DiT sees
the stage's timestep ``stage_timesteps[k][i]`` (0-1000 scale).

Two modes, one code path (``temporal_pyramid``):

* full sequence: every column denoises the whole clip;
* temporal pyramid (autoregressive): column ``k`` keeps only the first ``n`` units of the
  clip (``n`` cycles with the step so the top stage sees short and long histories), trains
  on the last unit, and is conditioned on the earlier units taken from the *clean* latents,
  the most recent at stage ``k``, older ones at stages ``k-1, k-2, ...`` down to stage 0 (all
  remaining units as one clip) and corrupted as ``c * eps + (1 - c) * x`` with
  ``c ~ U(0, corrupt_ratio)`` per sample, so the model learns to tolerate its own errors.

Randomness: everything is drawn from the ``generator`` passed in, in the reference's order
(text drop, full-resolution noise, then per column: timestep, corruption level, history
noise). With ``generator=None`` the same draws come from torch's global RNG exactly as the
reference draws them (scalars on the CPU, noise on the latents' device), which is how the
golden test reproduces a recorded reference step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from ..scheduling import PyramidFlowScheduler, upsample_nearest_2x

__all__ = [
    "HistoryClip",
    "PyramidObjective",
    "TextBatch",
    "TrainingBatch",
    "build_training_batch",
    "column_stages",
    "flow_matching_loss",
    "history_plan",
    "spatial_pyramid",
    "units_per_stage",
]

TIMESTEP_SCHEMES = ("uniform", "logit_normal", "mode")
DIT_PATCH = 2  # both pyramid DiTs pack 2x2 latent patches into one token


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PyramidObjective:
    """Knobs of the objective; defaults are the reference's video recipe.

    Args:
        sample_ratios: columns per stage in a batch (low to high resolution); the batch must
            be a multiple of their sum.
        temporal_pyramid: autoregressive training with the temporal pyramid (else full sequence).
        frame_per_unit: latent frames per autoregressive unit after the first (image) frame.
        max_latent_frames: the longest training clip in latent frames; sets the cycle of
            history lengths (the reference's ``max_temporal_length``).
        corrupt_ratio: history corruption level is drawn from ``U(0, corrupt_ratio)``.
        cfg_rate: probability of replacing a sample's text by the null text.
        timestep_sampling: ``"uniform"`` (what the reference trains with), ``"logit_normal"``
            or ``"mode"`` (SD3's schemes; ``mode_scale`` 1.29 is SD3's default). The reference
            passes ``logit_mean/std`` and ``mode_scale=1.29`` but calls the uniform scheme.
        video_sync_group: ranks that see the same video with different history lengths.
    """

    sample_ratios: tuple[int, ...] = (1, 2, 1)
    temporal_pyramid: bool = True
    frame_per_unit: int = 1
    max_latent_frames: int = 16
    corrupt_ratio: float = 1 / 3
    cfg_rate: float = 0.1
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    video_sync_group: int = 1
    stage_columns: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ratios = tuple(self.sample_ratios)
        if not ratios or any(isinstance(r, bool) or int(r) != r or r < 1 for r in ratios):
            raise ValueError(f"sample_ratios={list(ratios)}: give one positive integer per pyramid stage")
        object.__setattr__(self, "sample_ratios", tuple(int(r) for r in ratios))
        object.__setattr__(self, "stage_columns", tuple(column_stages(self.sample_ratios)))
        if self.frame_per_unit < 1:
            raise ValueError(f"frame_per_unit={self.frame_per_unit}: must be at least 1")
        if self.max_latent_frames < 1:
            raise ValueError(f"max_latent_frames={self.max_latent_frames}: must be at least 1")
        units = self.max_units
        if not 1 <= self.video_sync_group <= units or units % self.video_sync_group:
            raise ValueError(f"video_sync_group={self.video_sync_group} must divide the {units} units of a "
                             f"{self.max_latent_frames}-frame clip (frame_per_unit={self.frame_per_unit})")
        for key in ("corrupt_ratio", "cfg_rate"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key}={getattr(self, key)}: must lie in [0, 1]")
        if self.timestep_sampling not in TIMESTEP_SCHEMES:
            raise ValueError(f"timestep_sampling={self.timestep_sampling!r}: choose one of {list(TIMESTEP_SCHEMES)}")

    @property
    def num_stages(self) -> int:
        return len(self.sample_ratios)

    @property
    def num_columns(self) -> int:
        return len(self.stage_columns)

    @property
    def max_units(self) -> int:
        """Autoregressive units of a ``max_latent_frames`` clip (first frame + units of f frames)."""
        return 1 + (self.max_latent_frames - 1) // self.frame_per_unit

    def check_scheduler(self, scheduler: PyramidFlowScheduler) -> None:
        if scheduler.num_stages != self.num_stages:
            raise ValueError(f"sample_ratios has {self.num_stages} entries but the scheduler has "
                             f"{scheduler.num_stages} stages; give one ratio per stage")


class TextBatch(NamedTuple):
    """Text conditioning of N samples: T5 ``embeds (N, L, D)``, ``mask (N, L)``, CLIP ``pooled (N, P)``."""

    embeds: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def to(self, device) -> "TextBatch":
        return TextBatch(*(t.to(device) for t in self))


@dataclass
class TrainingBatch:
    """What one DiT training call needs, in the DiT's training form.

    ``sample[s]`` is column s's clips (history first, noisy clip last), ``timesteps`` and
    ``text`` rows are ``b * S + s``; ``targets[s]`` matches the noisy clip of column s.
    """

    sample: list[list[torch.Tensor]]
    timesteps: torch.Tensor
    text: TextBatch
    targets: list[torch.Tensor]
    stages: list[int]
    dropped: torch.Tensor  # (N,) bool: rows whose text was replaced by the null text
    sigmas: list[torch.Tensor]  # per column (b,) stage-local noise ratio r

    def dit_kwargs(self) -> dict:
        return dict(sample=self.sample, encoder_hidden_states=self.text.embeds,
                    encoder_attention_mask=self.text.mask, pooled_projections=self.text.pooled,
                    timestep_ratio=self.timesteps)


# --------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------

def column_stages(sample_ratios: Sequence[int]) -> list[int]:
    """Stage of every batch column: ``(1, 2, 1) -> [0, 1, 1, 2]``."""
    return [stage for stage, count in enumerate(sample_ratios) for _ in range(count)]


def spatial_pyramid(x: torch.Tensor, num_stages: int, gain: float = 1.0) -> list[torch.Tensor]:
    """``x`` halved ``num_stages - 1`` times (bilinear), lowest resolution first.

    ``gain`` multiplies each halving: 2 keeps i.i.d. unit noise at unit variance (a 2x2 mean
    of independent values has a quarter of their variance).
    """
    levels = [x]
    for _ in range(num_stages - 1):
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).flatten(0, 1)  # (B*T, C, H, W)
        frames = F.interpolate(frames, size=(h // 2, w // 2), mode="bilinear") * gain
        x = frames.unflatten(0, (b, t)).transpose(1, 2)  # (B, C, T, H/2, W/2)
        levels.append(x)
    return levels[::-1]


def units_per_stage(step: int, objective: PyramidObjective, available_units: int, rank: int = 0) -> list[int]:
    """Units (first frame + ``frame_per_unit`` chunks) each stage's columns train on at ``step``.

    The top stage gets ``k`` units with ``k`` cycling over ``1 .. max_units`` with the step
    (shifted by the rank inside its sync group); the lower stages get ``max_units + 1 - k``,
    so the token count stays about constant. Capped by the units the clip really has.
    """
    sync = objective.video_sync_group
    turns = objective.max_units // sync
    top = (rank % sync + 1) + (step % turns) * sync
    lower = max(1 + objective.max_units - top, 1)
    units = [lower] * (objective.num_stages - 1) + [top]
    return [min(u, available_units) for u in units]


class HistoryClip(NamedTuple):
    """One history clip: latent frames ``[start, stop)`` of the clip, at pyramid ``stage``."""

    stage: int
    start: int
    stop: int


def history_plan(stage: int, num_units: int, frame_per_unit: int) -> list[HistoryClip]:
    """History clips of a column at ``stage`` training unit ``num_units - 1``, most recent first.

    Unit ``j`` back (``j = 1`` the one just before the noisy unit) is at stage ``stage - j + 1``;
    the most recent is always its own clip at ``stage``; all older units that reach stage 0 are
    merged into one clip (the reference's temporal pyramid).
    """
    f = frame_per_unit
    frames = 1 + (num_units - 1) * f
    clips = []
    for j in range(1, num_units):
        unit_stage = stage if j == 1 else stage - j + 1
        if j > 1 and unit_stage <= 0:
            clips.append(HistoryClip(0, 0, frames - j * f))  # every older unit, at the lowest stage
            break
        clips.append(HistoryClip(unit_stage, max(frames - (j + 1) * f, 0), frames - j * f))
    return clips


def sample_timestep_indices(count: int, objective: PyramidObjective, num_train_timesteps: int,
                            generator: torch.Generator | None) -> torch.Tensor:
    """Indices into a stage's 1000-step grid (0 = pure start point), one per sample."""
    device = generator.device if generator is not None else "cpu"
    if objective.timestep_sampling == "logit_normal":
        u = torch.sigmoid(torch.randn(count, generator=generator, device=device) * objective.logit_std
                          + objective.logit_mean)
    else:
        u = torch.rand(count, generator=generator, device=device)
        if objective.timestep_sampling == "mode":
            u = 1 - u - objective.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return (u * num_train_timesteps).long().clamp(0, num_train_timesteps - 1).cpu()


def flow_matching_loss(predictions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over all samples of the per-sample MSE (fp32), every column weighted by its samples."""
    per_sample = [((p.float() - t.float()) ** 2).flatten(1).mean(1) for p, t in zip(predictions, targets)]
    return torch.cat(per_sample).mean()


def check_training_latents(latents: torch.Tensor, objective: PyramidObjective) -> None:
    """Clear errors for latents the objective cannot split into columns and pyramid stages."""
    if latents.ndim != 5:
        raise ValueError(f"latents must be (N, C, T, H, W), got shape {tuple(latents.shape)}")
    n, _, _, h, w = latents.shape
    if n % objective.num_columns:
        raise ValueError(f"batch of {n} latents is not a multiple of sum(sample_ratios)="
                         f"{objective.num_columns} ({list(objective.sample_ratios)}); change the batch size")
    multiple = DIT_PATCH * 2 ** (objective.num_stages - 1)
    if h % multiple or w % multiple:
        raise ValueError(f"latent size {h}x{w} must be a multiple of {multiple}: the pyramid halves it "
                         f"{objective.num_stages - 1} times and the DiT packs 2x2 patches (crop or resize the video)")


# --------------------------------------------------------------------------------------
# the batch
# --------------------------------------------------------------------------------------

class _Draws:
    """Every random draw of the objective, in the reference's order (see the module doc)."""

    def __init__(self, generator: torch.Generator | None, noise_device: torch.device):
        self.generator = generator
        self.scalar_device = generator.device if generator is not None else torch.device("cpu")
        self.noise_device = generator.device if generator is not None else noise_device

    def uniform(self, count: int, device, on_noise_device: bool = False) -> torch.Tensor:
        where = self.noise_device if on_noise_device else self.scalar_device
        return torch.rand(count, generator=self.generator, device=where).to(device)

    def normal(self, shape, device, frame_major: bool = False) -> torch.Tensor:
        """Standard normal ``(B, C, T, H, W)``; ``frame_major`` stores it (B, T, C, H, W) in memory.

        The layout matters only for reproducing the reference: its ``randn_like`` follows the
        frame-major layout of its halved latents, and torch fills such a strided tensor with
        a different sequence of draws than a contiguous one.
        """
        if not frame_major:
            return torch.randn(shape, generator=self.generator, device=self.noise_device).to(device)
        b, c, t, h, w = shape
        out = torch.empty((b, t, c, h, w), device=self.noise_device).transpose(1, 2)
        return out.normal_(generator=self.generator).to(device)


def drop_text(text: TextBatch, dropped: torch.Tensor, null_text: TextBatch) -> TextBatch:
    """``text`` with the rows in ``dropped`` replaced by ``null_text`` (one row, broadcast)."""
    if null_text.embeds.shape[1:] != text.embeds.shape[1:] or null_text.pooled.shape[1:] != text.pooled.shape[1:]:
        raise ValueError(f"null text {tuple(null_text.embeds.shape)}/{tuple(null_text.pooled.shape)} does not match "
                         f"the text features {tuple(text.embeds.shape)}/{tuple(text.pooled.shape)}")
    keep = ~dropped.to(text.embeds.device)
    return TextBatch(*(torch.where(keep.view(-1, *[1] * (t.ndim - 1)), t, null.to(t)[:1])
                       for t, null in zip(text, null_text)))


def build_training_batch(latents: torch.Tensor, text: TextBatch, objective: PyramidObjective,
                         scheduler: PyramidFlowScheduler, *, null_text: TextBatch | None = None,
                         generator: torch.Generator | None = None, step: int = 0, rank: int = 0) -> TrainingBatch:
    """Noisy inputs, timesteps, text and targets for one training step.

    Args:
        latents: ``(N, C, T, H, W)`` normalised clean latents (DiT space), N a multiple of
            ``objective.num_columns``, H and W multiples of ``2 * 2**(stages - 1)``.
        text: the N samples' text features.
        null_text: one row of text features used for dropped samples (required if cfg_rate > 0).
        generator: source of every random draw; None = the global RNG, as the reference.
        step: training step, selects the history length (temporal pyramid only).
        rank: rank of this process, shifts the history length inside a sync group.
    """
    objective.check_scheduler(scheduler)
    check_training_latents(latents, objective)
    n, _, t, _, _ = latents.shape
    if text.embeds.shape[0] != n or text.mask.shape[0] != n or text.pooled.shape[0] != n:
        raise ValueError(f"text features have {text.embeds.shape[0]} rows for {n} latents")
    num_columns, stages = objective.num_columns, objective.stage_columns
    draws = _Draws(generator, latents.device)

    # 1. text dropout for classifier-free guidance
    dropped = draws.uniform(n, "cpu") <= objective.cfg_rate
    if bool(dropped.any()):
        if null_text is None:
            raise ValueError("cfg_rate > 0 needs null_text (the text features of the empty prompt)")
        text = drop_text(text, dropped, null_text)

    # 2. clean and noise pyramids (one noise draw shared by every stage, as the reference)
    with torch.no_grad():
        clean = spatial_pyramid(latents.float(), objective.num_stages)
        noise = spatial_pyramid(draws.normal(latents.shape, latents.device), objective.num_stages, gain=2.0)
    max_units = 1 + (t - 1) // objective.frame_per_unit
    units = units_per_stage(step, objective, max_units, rank) if objective.temporal_pyramid else None

    # 3. per column: start/end points, timestep, noisy latent, target, history
    sample, targets, timesteps, sigmas = [], [], [], []
    for column, stage in enumerate(stages):
        rows = slice(column, None, num_columns)
        clips, target, timestep, sigma = _column_inputs(
            clean, noise, rows, stage, units[stage] if units is not None else None, objective, scheduler, draws)
        sample.append(clips)
        targets.append(target)
        timesteps.append(timestep)
        sigmas.append(sigma)
    # (b, S) -> row b * S + s, the DiT's interleaving (= the original batch order)
    timestep_rows = torch.stack(timesteps, dim=1).reshape(-1).to(latents.device)
    dtype = latents.dtype
    sample = [[clip.to(dtype) for clip in clips] for clips in sample]
    return TrainingBatch(sample, timestep_rows, text, targets, list(stages), dropped, sigmas)


@torch.no_grad()
def _column_inputs(clean, noise, rows, stage, num_units, objective, scheduler, draws):
    """Clips (history first), target, timesteps and ratios of one column (see the module doc)."""
    start_sigma, end_sigma = scheduler.start_sigmas[stage], scheduler.end_sigmas[stage]
    x, eps = clean[stage][rows], noise[stage][rows]  # (b, C, T, H, W)
    if stage == 0:
        start = eps
    else:
        start = start_sigma * eps + (1 - start_sigma) * upsample_nearest_2x(clean[stage - 1][rows])
    end = x if stage == objective.num_stages - 1 else end_sigma * eps + (1 - end_sigma) * x

    b = x.shape[0]
    index = sample_timestep_indices(b, objective, scheduler.num_train_timesteps, draws.generator)
    timestep = scheduler.tables.stage_timesteps[stage][index].float()
    ratio = scheduler.stage_sigmas[index].float().to(x.device)  # stage-local sigma r
    r = ratio.view(b, 1, 1, 1, 1)
    noisy = r * start + (1 - r) * end
    target = start - end
    corruption = draws.uniform(b, x.device, on_noise_device=True) * objective.corrupt_ratio  # drawn in both modes

    if num_units is None:  # full sequence
        return [noisy], target, timestep, ratio
    f = objective.frame_per_unit
    frames = 1 + (num_units - 1) * f
    last = slice(max(frames - f, 0), frames)  # the unit being trained
    history = []
    c = corruption.view(b, 1, 1, 1, 1)
    for clip in history_plan(stage, num_units, f):
        cond = clean[clip.stage][rows][:, :, clip.start:clip.stop]
        # Halved latents are frame-major in memory, and so is the reference's randn_like of them.
        frame_major = clip.stage < objective.num_stages - 1
        history.append(c * draws.normal(cond.shape, cond.device, frame_major) + (1 - c) * cond)
    return [*history[::-1], noisy[:, :, last]], target[:, :, last], timestep, ratio
