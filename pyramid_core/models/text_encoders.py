"""Prompt encoding for Pyramid Flow: CLIP pooled vectors plus T5-XXL token embeddings.

Both released families use the same two outputs, with different CLIPs:

* miniFLUX (``family="flux"``): CLIP-L ``pooler_output`` (768, no projection) and T5-XXL.
* SD3 (``family="mmdit"``): CLIP-L and CLIP-bigG ``text_embeds`` (projected, 768 + 1280,
  concatenated to 2048) and T5-XXL.

CLIPs get no attention mask (the reference passes none) and pad to their 77 positions;
T5 pads to 128 tokens, receives the tokenizer's mask, and that mask is returned as int64.
The official checkpoints are diffusers-style folders; ``TEXT_ENCODER_LAYOUTS`` lists which
subfolder holds what.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch import nn

__all__ = [
    "PromptEmbeddings",
    "PyramidTextEncoder",
    "TEXT_ENCODER_LAYOUTS",
    "TextEncoderLayout",
    "detect_text_encoder_family",
]

T5_MAX_LENGTH = 128        # tokens of T5 context the DiTs were trained with
CLIP_MAX_LENGTH = 77       # CLIP position embeddings


@dataclass(frozen=True)
class TextEncoderLayout:
    """Where one family keeps its text encoders inside a checkpoint folder."""

    clips: tuple[tuple[str, str], ...]    # (tokenizer subfolder, encoder subfolder) per CLIP
    clip_class: str                       # transformers class of every CLIP encoder
    t5: tuple[str, str]                   # (tokenizer subfolder, encoder subfolder)


TEXT_ENCODER_LAYOUTS: dict[str, TextEncoderLayout] = {
    "flux": TextEncoderLayout(
        clips=(("tokenizer", "text_encoder"),),
        clip_class="CLIPTextModel",
        t5=("tokenizer_2", "text_encoder_2"),
    ),
    "mmdit": TextEncoderLayout(
        clips=(("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
        clip_class="CLIPTextModelWithProjection",
        t5=("tokenizer_3", "text_encoder_3"),
    ),
}


class PromptEmbeddings(NamedTuple):
    """What the DiTs take from the text side (unpacks as a 3-tuple)."""

    prompt_embeds: torch.Tensor      # (B, 128, 4096) T5 last hidden state
    attention_mask: torch.Tensor     # (B, 128) int64, 1 for real tokens (incl. EOS), 0 for padding
    pooled: torch.Tensor             # (B, 768) miniFLUX or (B, 2048) SD3


def detect_text_encoder_family(folder: str | os.PathLike) -> str:
    """``"mmdit"`` if the folder has the SD3 third encoder, ``"flux"`` if it has the miniFLUX pair."""
    folder = Path(folder)
    for family in ("mmdit", "flux"):       # mmdit first: its layout contains flux's subfolders
        layout = TEXT_ENCODER_LAYOUTS[family]
        needed = [name for pair in (*layout.clips, layout.t5) for name in pair]
        if all((folder / name).is_dir() for name in needed):
            return family
    raise ValueError(
        f"{folder} has no Pyramid Flow text encoders: expected tokenizer/, text_encoder/, tokenizer_2/, "
        "text_encoder_2/ (miniFLUX: CLIP-L + T5) and for SD3 also tokenizer_3/, text_encoder_3/"
    )


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    # transformers renamed ``torch_dtype`` to ``dtype`` (4.56); keep both worlds working.
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _narrow_linears(module: nn.Module, weight_dtype: torch.dtype) -> None:
    """Store every Linear weight of ``module`` in ``weight_dtype`` (fp8), computed by upcasting.

    Always the upcast, never fp8 matmuls: T5's activations have outliers that a per-tensor
    fp8 input scale would flatten (the reason it runs in bf16, not fp16). T5's feed-forward
    output layers (``wo``) keep the compute dtype: transformers casts their input to their
    weight's dtype, which must not be fp8."""
    from .fp8_linear import use_fp8_linears

    kept = {id(m.wo) for m in module.modules() if isinstance(getattr(m, "wo", None), nn.Linear)}
    for layer in module.modules():
        if type(layer) is nn.Linear and id(layer) not in kept:
            layer.weight.data = layer.weight.data.to(weight_dtype)
    use_fp8_linears(module)
    for layer in module.modules():
        if hasattr(layer, "fp8_matmul"):
            layer.fp8_matmul = False


class PyramidTextEncoder(nn.Module):
    """CLIP(s) + T5 prompt encoder returning :class:`PromptEmbeddings`.

    Args:
        clip_tokenizers: one tokenizer per CLIP.
        clip_encoders: ``CLIPTextModel`` (pooled = ``pooler_output``) or
            ``CLIPTextModelWithProjection`` (pooled = ``text_embeds``), same order.
        t5_tokenizer, t5_encoder: the T5 pair (``T5EncoderModel``).
        max_sequence_length: T5 tokens (128 for the released DiTs).
    """

    def __init__(
        self,
        clip_tokenizers: Sequence,
        clip_encoders: Sequence[nn.Module],
        t5_tokenizer,
        t5_encoder: nn.Module,
        max_sequence_length: int = T5_MAX_LENGTH,
    ):
        super().__init__()
        if len(clip_tokenizers) != len(clip_encoders) or not clip_encoders:
            raise ValueError("give one tokenizer per CLIP encoder, and at least one CLIP")
        self.clip_tokenizers = list(clip_tokenizers)
        self.clip_encoders = nn.ModuleList(clip_encoders)
        self.t5_tokenizer = t5_tokenizer
        self.t5_encoder = t5_encoder
        self.max_sequence_length = int(max_sequence_length)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        family: str | None = None,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
        weight_dtype: torch.dtype | None = None,
    ) -> "PyramidTextEncoder":
        """Load the text encoders of an official checkpoint folder (local files only).

        Args:
            folder: the model folder holding ``tokenizer*/`` and ``text_encoder*/``.
            family: ``"flux"`` or ``"mmdit"``; detected from the subfolders when ``None``.
            dtype: compute dtype (bf16 by default; T5 overflows in fp16).
            device: where to put the encoders.
            weight_dtype: ``torch.float8_e4m3fn`` keeps the Linear weights (nearly all of T5's
                4.7 B parameters) in fp8, half of bf16, upcast to ``dtype`` per layer.
        """
        import transformers

        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"text encoder folder {folder} does not exist")
        family = family or detect_text_encoder_family(folder)
        if family not in TEXT_ENCODER_LAYOUTS:
            raise ValueError(f"unknown text encoder family {family!r}; choose one of {sorted(TEXT_ENCODER_LAYOUTS)}")
        layout = TEXT_ENCODER_LAYOUTS[family]
        missing = [name for pair in (*layout.clips, layout.t5) for name in pair if not (folder / name).is_dir()]
        if missing:
            raise ValueError(f"{folder} lacks {', '.join(m + '/' for m in missing)} needed by the {family} text encoders")

        def tokenizer(name):
            return transformers.AutoTokenizer.from_pretrained(folder / name, local_files_only=True)

        def model(model_class, name):
            return model_class.from_pretrained(folder / name, local_files_only=True, **_dtype_kwarg(dtype))

        clip_class = getattr(transformers, layout.clip_class)
        encoder = cls(
            clip_tokenizers=[tokenizer(tok) for tok, _ in layout.clips],
            clip_encoders=[model(clip_class, enc) for _, enc in layout.clips],
            t5_tokenizer=tokenizer(layout.t5[0]),
            t5_encoder=model(transformers.T5EncoderModel, layout.t5[1]),
        )
        if weight_dtype is not None and weight_dtype != dtype:
            _narrow_linears(encoder, weight_dtype)
        return encoder.to(device) if device is not None else encoder

    # -- encoding ------------------------------------------------------------------------

    @staticmethod
    def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
        """Where ``module`` computes and in which dtype (fp8-stored weights are not it)."""
        parameter = next(p for p in module.parameters() if p.dtype != torch.float8_e4m3fn)
        return parameter.device, parameter.dtype

    def _clip_pooled(self, tokenizer, encoder: nn.Module, prompts: list[str]) -> torch.Tensor:
        device, dtype = self._device_dtype(encoder)
        max_length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
        tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                           return_tensors="pt")
        output = encoder(tokens.input_ids.to(device))           # no attention mask, as trained
        pooled = output.text_embeds if hasattr(output, "text_embeds") else output.pooler_output
        return pooled.to(dtype)                                 # (B, D_clip)

    def _t5_embeds(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device, dtype = self._device_dtype(self.t5_encoder)
        tokens = self.t5_tokenizer(prompts, padding="max_length", max_length=self.max_sequence_length,
                                   truncation=True, add_special_tokens=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device=device, dtype=torch.int64)          # (B, L)
        embeds = self.t5_encoder(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
        return embeds.to(dtype), mask                                               # (B, L, D_t5)

    @torch.no_grad()
    def encode_prompt(self, prompts: str | Sequence[str]) -> PromptEmbeddings:
        """Encode one prompt or a batch of prompts.

        Returns:
            ``PromptEmbeddings(prompt_embeds (B, 128, D_t5), attention_mask (B, 128) int64,
            pooled (B, sum of CLIP widths))``, on the T5 encoder's device.
        """
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("encode_prompt takes a string or a non-empty list of strings")
        pooled = torch.cat([self._clip_pooled(tok, enc, prompts)
                            for tok, enc in zip(self.clip_tokenizers, self.clip_encoders)], dim=-1)
        embeds, mask = self._t5_embeds(prompts)
        return PromptEmbeddings(embeds, mask, pooled.to(embeds.device))

    def forward(self, prompts: str | Sequence[str]) -> PromptEmbeddings:
        return self.encode_prompt(prompts)
