"""Text conditioning and classifier-free guidance, as the reference does them.

* The guidance batch is ``[negative, positive]``: the DiT sees ``cat([latents] * 2)`` with
  the negative embeddings in the first half and the positive ones in the second.
* ``prediction = uncond + scale * (text - uncond)`` with ``scale`` the unit's guidance.
* Guidance is on when the scale is > 0. The reference runs the doubled batch and the formula
  for every scale > 0, also for 0 < scale <= 1 (1 gives the positive prediction, below 1 it
  moves toward the negative one); with the scale at 0 it runs the positive prompt alone.

One deliberate difference: the reference switches guidance on or off for the *whole* video
from the first-frame ``guidance_scale`` only (``video_guidance_scale = 0`` with
``guidance_scale > 0`` gives purely negative-prompt video units). Here each stage of each
unit decides from its own scale, so a scale of 0 always means "positive prompt only".
With both scales > 0 (every practical setting) the two agree exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..models.text_encoders import PromptEmbeddings
from ..variants import DEFAULT_NEGATIVE_PROMPT, PROMPT_SUFFIX
from .timeline import TimedLine, check_schedule_fits, in_force, parse_timed_lines

__all__ = [
    "TextConditioning",
    "apply_guidance",
    "check_guidance_scale",
    "encode_prompt_schedule",
    "encode_text",
    "guidance_enabled",
]


def check_guidance_scale(scale: float, name: str = "guidance_scale") -> float:
    """``scale`` as a float; ``ValueError`` if it is negative or not finite."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{name} must be a finite number, got {scale!r}")
    if scale < 0:
        raise ValueError(f"{name}={scale}: guidance scales must be >= 0 (0 turns guidance off)")
    return float(scale)


def guidance_enabled(scale: float) -> bool:
    """Whether a unit with this scale runs the ``[negative, positive]`` batch."""
    return scale > 0


def apply_guidance(prediction: torch.Tensor, scale: float) -> torch.Tensor:
    """Combine a DiT prediction of the guidance batch into one velocity (fp32).

    Args:
        prediction: ``(2B, ...)`` for ``[negative, positive]`` when guidance is on, else ``(B, ...)``.
        scale: the guidance scale of this step.
    """
    prediction = prediction.to(torch.float32)
    if not guidance_enabled(scale):
        return prediction
    uncond, text = prediction.chunk(2)
    return uncond + scale * (text - uncond)


def _check_embeddings(embeddings: PromptEmbeddings, name: str) -> PromptEmbeddings:
    if not isinstance(embeddings, tuple) or len(embeddings) != 3:
        raise ValueError(f"{name} must be PromptEmbeddings(prompt_embeds, attention_mask, pooled)")
    embeds, mask, pooled = embeddings
    if embeds.ndim != 3 or mask.ndim != 2 or pooled.ndim != 2:
        raise ValueError(
            f"{name}: expected prompt_embeds (B, L, D), attention_mask (B, L), pooled (B, P); got "
            f"{tuple(embeds.shape)}, {tuple(mask.shape)}, {tuple(pooled.shape)}"
        )
    if not embeds.shape[0] == mask.shape[0] == pooled.shape[0] or embeds.shape[1] != mask.shape[1]:
        raise ValueError(f"{name}: prompt_embeds, attention_mask and pooled disagree in batch or length")
    return PromptEmbeddings(*embeddings)


def _expand_rows(embeddings: PromptEmbeddings, batch: int, name: str) -> PromptEmbeddings:
    rows = embeddings.prompt_embeds.shape[0]
    if rows == batch:
        return embeddings
    if rows != 1:
        raise ValueError(f"{name} has {rows} prompts but the latents have batch {batch}")
    return PromptEmbeddings(*(t.expand(batch, *t.shape[1:]) for t in embeddings))


@dataclass(frozen=True)
class TextConditioning:
    """Positive and (optional) negative prompt embeddings for the sampler.

    ``positive`` may hold one prompt per video in the batch, or one for all; ``negative``
    one row or as many rows as ``positive``. ``negative=None`` only works with guidance off.
    Text from any source fits: :func:`encode_text`, ComfyUI conditioning, recorded tensors.

    ``timeline`` makes the prompt change over time (:func:`encode_prompt_schedule`): entries
    ``(TimedLine, positive embeddings)`` from 0 s on, the first one being ``positive``; each
    unit is conditioned on the entry in force at its first frame (:meth:`at`). The negative
    prompt stays one.
    """

    positive: PromptEmbeddings
    negative: Optional[PromptEmbeddings] = None
    timeline: tuple[tuple[TimedLine, PromptEmbeddings], ...] = ()

    def __post_init__(self):
        if self.timeline:
            entries = tuple((line, _check_embeddings(e, f"prompt at {line}")) for line, e in self.timeline)
            if any(e.prompt_embeds.shape[2:] != self.positive.prompt_embeds.shape[2:] for _, e in entries):
                raise ValueError("the prompts of a schedule come from different text encoders")
            object.__setattr__(self, "timeline", entries)
        object.__setattr__(self, "positive", _check_embeddings(self.positive, "positive"))
        if self.negative is not None:
            negative = _check_embeddings(self.negative, "negative")
            if negative.prompt_embeds.shape[2] != self.positive.prompt_embeds.shape[2] or \
                    negative.pooled.shape[1] != self.positive.pooled.shape[1]:
                raise ValueError("negative and positive embeddings have different widths: "
                                 "were they made by different text encoders?")
            object.__setattr__(self, "negative", negative)

    @property
    def batch_size(self) -> int:
        return self.positive.prompt_embeds.shape[0]

    def at(self, seconds: float) -> "TextConditioning":
        """The conditioning in force at ``seconds`` into the video (itself without a timeline)."""
        if not self.timeline:
            return self
        positive = self.timeline[in_force(tuple(line for line, _ in self.timeline), seconds)][1]
        return TextConditioning(positive, self.negative)

    def check_fits(self, num_latent_frames: int) -> None:
        """``ValueError`` naming a scheduled prompt that starts after the video's last frame."""
        check_schedule_fits(tuple(line for line, _ in self.timeline), num_latent_frames, "prompt schedule")

    def model_inputs(
        self, batch: int, scale: float, dtype: torch.dtype, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """DiT keyword arguments (text part) for latents of batch ``batch`` at this scale.

        Returns ``encoder_hidden_states (N, L, D)``, ``encoder_attention_mask (N, L)`` and
        ``pooled_projections (N, P)`` with ``N = 2 * batch`` (``[negative, positive]``) when
        guidance is on, else ``N = batch``.
        """
        rows = [_expand_rows(self.positive, batch, "positive")]
        if guidance_enabled(scale):
            if self.negative is None:
                raise ValueError("guidance is on (scale > 0) but no negative embeddings were given; "
                                 "pass TextConditioning(positive, negative) or set the scale to 0")
            negative = self.negative
            if negative.prompt_embeds.shape[1] != self.positive.prompt_embeds.shape[1]:
                raise ValueError("negative and positive prompt embeddings need the same token length")
            rows.insert(0, _expand_rows(negative, batch, "negative"))
        embeds, mask, pooled = (torch.cat(parts) for parts in zip(*rows))
        return dict(
            encoder_hidden_states=embeds.to(device=device, dtype=dtype),
            encoder_attention_mask=mask.to(device=device),
            pooled_projections=pooled.to(device=device, dtype=dtype),
        )


def encode_text(
    text_encoder,
    prompt: str | Sequence[str],
    negative_prompt: Optional[str | Sequence[str]] = DEFAULT_NEGATIVE_PROMPT,
    prompt_suffix: str = PROMPT_SUFFIX,
) -> TextConditioning:
    """Encode prompts as the reference does: ``prompt_suffix`` is appended to positive
    prompts only; ``negative_prompt`` defaults to the reference's, ``None`` encodes "".

    Args:
        text_encoder: a :class:`pyramid_core.models.text_encoders.PyramidTextEncoder` (or
            anything with ``encode_prompt(list[str]) -> PromptEmbeddings``).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a string or a non-empty list of strings")
    negatives = negative_prompt if negative_prompt is not None else ""
    negatives = [negatives] if isinstance(negatives, str) else list(negatives)
    positive = text_encoder.encode_prompt([p + prompt_suffix for p in prompts])
    negative = text_encoder.encode_prompt(negatives)
    return TextConditioning(PromptEmbeddings(*positive), PromptEmbeddings(*negative))


def encode_prompt_schedule(
    text_encoder,
    schedule: str,
    negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT,
    prompt_suffix: str = PROMPT_SUFFIX,
) -> TextConditioning:
    """Encode a prompt that changes over time, one ``<seconds>[s]: <prompt>`` per line
    (:mod:`pyramid_core.sampling.timeline`), e.g. ``"0s: a red fox walks through snow\n4s: the
    fox starts to run"``. Every prompt gets ``prompt_suffix``; the negative prompt is one.
    ``ValueError`` naming the line for times that are not numbers, negative or unsorted.
    """
    lines = parse_timed_lines(schedule, "prompt schedule")
    negatives = [negative_prompt if negative_prompt is not None else ""]
    positives = PromptEmbeddings(*text_encoder.encode_prompt([line.value + prompt_suffix for line in lines]))
    entries = tuple((line, PromptEmbeddings(*(t[i:i + 1] for t in positives))) for i, line in enumerate(lines))
    negative = PromptEmbeddings(*text_encoder.encode_prompt(negatives))
    return TextConditioning(entries[0][1], negative, entries)
