"""Prompt encoding: Pyramid Flow conditioning from the core CLIP or the official text encoders.

The DiTs were trained on 128 T5-XXL tokens *with* T5's attention mask, plus the pooled
CLIP vector. ComfyUI's flux CLIP pads T5 to 256 tokens without a mask, so the core
``CLIPTextEncode`` cannot give that. :class:`ComfyClipPromptEncoder` calls the CLIP's own
T5 and CLIP transformers with the official tokenisation instead, and never touches the
settings of the CLIP object, which ``CLIP.clone()`` shares with every other node.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..pyramid_core.models.text_encoders import CLIP_MAX_LENGTH, T5_MAX_LENGTH, PromptEmbeddings
from ..pyramid_core.sampling import encode_text
from ..pyramid_core.variants import DEFAULT_NEGATIVE_PROMPT, PROMPT_SUFFIX
from ._runtime import ConditioningType, TextEncoderType, model_on_device

CATEGORY = "PyramidFlow/conditioning"


class ComfyClipPromptEncoder:
    """``encode_prompt`` (as :class:`PyramidTextEncoder`) on a ComfyUI ``CLIP`` of type flux or sd3.

    flux (DualCLIPLoader t5xxl + clip_l): pooled = CLIP-L's unprojected EOS state (768).
    sd3 (TripleCLIPLoader): pooled = projected CLIP-L (768) + projected CLIP-G (1280).
    """

    def __init__(self, clip):
        self.clip = clip
        model, tokenizer = clip.cond_stage_model, clip.tokenizer
        self.t5 = getattr(model, "t5xxl", None)
        self.clip_l = getattr(model, "clip_l", None)
        self.clip_g = getattr(model, "clip_g", None)
        if self.t5 is None or self.clip_l is None:
            raise ValueError("this CLIP has no T5-XXL + CLIP-L pair: load t5xxl and clip_l with DualCLIPLoader "
                             "(type flux), or use the Pyramid Flow Text Encoder Loader")
        self.t5_tokenizer = tokenizer.t5xxl.tokenizer
        self.clip_tokenizers = [(tokenizer.clip_l.tokenizer, self.clip_l, self.clip_g is not None)]
        if self.clip_g is not None:
            self.clip_tokenizers.append((tokenizer.clip_g.tokenizer, self.clip_g, True))

    @staticmethod
    def _device(encoder) -> torch.device:
        return encoder.transformer.get_input_embeddings().weight.device

    def _t5(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.t5_tokenizer(prompts, padding="max_length", max_length=T5_MAX_LENGTH, truncation=True,
                                   return_tensors="pt")
        device = self._device(self.t5)
        mask = tokens["attention_mask"].to(device=device, dtype=torch.int64)                 # (B, 128)
        hidden = self.t5.transformer(tokens["input_ids"].to(device), mask, dtype=torch.float32)[0]
        return hidden.float(), mask                                                          # (B, 128, 4096)

    def _pooled(self, tokenizer, encoder, projected: bool, prompts: list[str]) -> torch.Tensor:
        tokens = tokenizer(prompts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                           return_tensors="pt")
        # CLIPTextModel returns (hidden, intermediate, projected pooled, pooled); no mask, as trained.
        outputs = encoder.transformer(tokens["input_ids"].to(self._device(encoder)), dtype=torch.float32)
        return (outputs[2] if projected else outputs[3]).float()

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeddings:
        self.clip.load_model()      # through comfy.model_management, with the CLIP's LoRA patches
        pooled = torch.cat([self._pooled(tok, enc, projected, prompts)
                            for tok, enc, projected in self.clip_tokenizers], dim=-1)
        embeds, mask = self._t5(prompts)
        return PromptEmbeddings(embeds, mask, pooled.to(embeds.device))


class _HandleEncoder:
    """``encode_prompt`` of a loaded text-encoder handle, on its device."""

    def __init__(self, handle):
        self.handle = handle

    def encode_prompt(self, prompts: list[str]) -> PromptEmbeddings:
        with model_on_device(self.handle) as encoder:
            return encoder.encode_prompt(prompts)


def _to_intermediate(embeddings: PromptEmbeddings) -> PromptEmbeddings:
    import comfy.model_management

    device = comfy.model_management.intermediate_device()
    return PromptEmbeddings(*(t.to(device) for t in embeddings))


class PyramidFlowTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowTextEncode",
            display_name="Pyramid Flow Text Encode",
            category=CATEGORY,
            description="Encodes the prompt and the negative prompt for the Pyramid Flow samplers "
                        "(128 masked T5 tokens + the pooled CLIP vector, as the model was trained).",
            inputs=[
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What the video shows."),
                io.String.Input("negative_prompt", multiline=True, default=DEFAULT_NEGATIVE_PROMPT,
                                tooltip="What guidance steers away from (used when a guidance scale is above 0). "
                                        "The default is the reference's."),
                io.String.Input("prompt_suffix", default=PROMPT_SUFFIX,
                                tooltip="Appended to the prompt (not the negative prompt), as the reference does. "
                                        "Clear it to encode the prompt exactly as written."),
                io.Clip.Input("clip", optional=True,
                              tooltip="t5xxl + clip_l from the core DualCLIPLoader (type flux) for miniFLUX, or the "
                                      "TripleCLIPLoader (sd3) for SD3. Its settings are not changed."),
                TextEncoderType.Input("text_encoder", optional=True,
                                      tooltip="Or the official text encoders from the Pyramid Flow Text Encoder Loader."),
            ],
            outputs=[ConditioningType.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, prompt: str, negative_prompt: str, prompt_suffix: str, clip=None,
                text_encoder=None) -> io.NodeOutput:
        if (clip is None) == (text_encoder is None):
            raise ValueError("connect exactly one of clip (DualCLIPLoader, type flux) or text_encoder "
                             "(Pyramid Flow Text Encoder Loader)")
        encoder = ComfyClipPromptEncoder(clip) if clip is not None else _HandleEncoder(text_encoder)
        text = encode_text(encoder, prompt, negative_prompt, prompt_suffix)
        return io.NodeOutput(type(text)(_to_intermediate(text.positive), _to_intermediate(text.negative)))
