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
from ..pyramid_core.sampling import (ConstantGuidance, GuidanceByTime, LinearGuidance, TextConditioning,
                                     encode_prompt_schedule, encode_text)
from ..pyramid_core.variants import DEFAULT_NEGATIVE_PROMPT, PROMPT_SUFFIX
from ._runtime import ConditioningType, GuidanceScheduleType, TextEncoderType, model_on_device

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


def _to_intermediate(text: TextConditioning) -> TextConditioning:
    """The conditioning on ComfyUI's intermediate device, where node outputs wait."""
    import comfy.model_management

    device = comfy.model_management.intermediate_device()

    def move(embeddings: PromptEmbeddings) -> PromptEmbeddings:
        return PromptEmbeddings(*(t.to(device) for t in embeddings))

    return TextConditioning(move(text.positive), move(text.negative),
                            tuple((line, move(embeddings)) for line, embeddings in text.timeline))


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
                *_encoder_inputs(),
            ],
            outputs=[ConditioningType.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, prompt: str, negative_prompt: str, prompt_suffix: str, clip=None,
                text_encoder=None) -> io.NodeOutput:
        text = encode_text(_prompt_encoder(clip, text_encoder), prompt, negative_prompt, prompt_suffix)
        return io.NodeOutput(_to_intermediate(text))


class PyramidFlowPromptSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowPromptSchedule",
            display_name="Pyramid Flow Prompt Schedule",
            category=CATEGORY,
            description="A prompt that changes over the video: one '<seconds>: <prompt>' per line, from 0s on. Each "
                        "temporal unit follows the prompt in force at its first frame; the negative prompt stays one.",
            inputs=[
                io.String.Input("schedule", multiline=True,
                                default="0s: a red fox walks through the snow\n4s: the fox starts to run",
                                tooltip="One line per prompt: '<seconds>: <prompt>', the first at 0s, times rising. "
                                        "Units start every 1/3 s (8 frames at 24 fps)."),
                io.String.Input("negative_prompt", multiline=True, default=DEFAULT_NEGATIVE_PROMPT,
                                tooltip="One negative prompt for the whole video (the reference's default)."),
                io.String.Input("prompt_suffix", default=PROMPT_SUFFIX,
                                tooltip="Appended to every prompt of the schedule, as the reference does."),
                *_encoder_inputs(),
            ],
            outputs=[ConditioningType.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, schedule: str, negative_prompt: str, prompt_suffix: str, clip=None,
                text_encoder=None) -> io.NodeOutput:
        text = encode_prompt_schedule(_prompt_encoder(clip, text_encoder), schedule, negative_prompt, prompt_suffix)
        return io.NodeOutput(_to_intermediate(text))


GUIDANCE_MODES = ("linear decay", "constant", "by time")
LINEAR_DEFAULTS = LinearGuidance(7.0)       # the reference's generate(): guidance 7, alpha 0.5, min 2.0


class PyramidFlowGuidanceSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowGuidanceSchedule",
            display_name="Pyramid Flow Guidance Schedule",
            category=CATEGORY,
            description="Guidance over the video, one scale per temporal unit for the first frame and the video "
                        "units alike; connect it to a Video Sampler or Unit Sampler (it replaces their scales).",
            inputs=[
                io.Combo.Input("mode", options=list(GUIDANCE_MODES), default="linear decay",
                               tooltip="linear decay: the reference's use_linear_guidance, max(guidance_scale - "
                                       "alpha x unit, min_guidance_scale) for unit 0 (the first frame), 1, 2, ... "
                                       "constant: guidance_scale for every unit. by time: the 'by_time' lines."),
                io.Float.Input("guidance_scale", default=LINEAR_DEFAULTS.start, min=0.0, max=30.0, step=0.1,
                               tooltip="The first unit's scale (linear decay), or every unit's (constant). "
                                       "7 as the reference's default."),
                io.Float.Input("alpha", default=LINEAR_DEFAULTS.alpha, min=0.0, max=10.0, step=0.05,
                               tooltip="Decrease per unit of linear decay (the reference's default 0.5)."),
                io.Float.Input("min_guidance_scale", default=LINEAR_DEFAULTS.minimum, min=0.0, max=30.0, step=0.1,
                               tooltip="Linear decay stops here (the reference's default 2.0)."),
                io.String.Input("by_time", multiline=True, default="0s: 7\n2s: 5\n4s: 4",
                                tooltip="For mode 'by time': '<seconds>: <scale>' per line, the first at 0s; each "
                                        "unit takes the scale in force at its first frame."),
            ],
            outputs=[GuidanceScheduleType.Output(display_name="guidance_schedule")],
        )

    @classmethod
    def execute(cls, mode: str, guidance_scale: float, alpha: float, min_guidance_scale: float,
                by_time: str) -> io.NodeOutput:
        if mode not in GUIDANCE_MODES:
            raise ValueError(f"mode={mode!r}: choose one of {', '.join(GUIDANCE_MODES)}")
        if mode == "linear decay":
            return io.NodeOutput(LinearGuidance(guidance_scale, alpha, min_guidance_scale))
        if mode == "constant":
            return io.NodeOutput(ConstantGuidance(guidance_scale))
        return io.NodeOutput(GuidanceByTime.from_text(by_time))


def _encoder_inputs() -> list:
    return [
        io.Clip.Input("clip", optional=True,
                      tooltip="t5xxl + clip_l from the core DualCLIPLoader (type flux) for miniFLUX, or the "
                              "TripleCLIPLoader (sd3) for SD3. Its settings are not changed."),
        TextEncoderType.Input("text_encoder", optional=True,
                              tooltip="Or the official text encoders from the Pyramid Flow Text Encoder Loader."),
    ]


def _prompt_encoder(clip, text_encoder):
    """What encodes the prompts: the core CLIP or the pack's text encoder handle (exactly one)."""
    if (clip is None) == (text_encoder is None):
        raise ValueError("connect exactly one of clip (DualCLIPLoader, type flux) or text_encoder "
                         "(Pyramid Flow Text Encoder Loader)")
    return ComfyClipPromptEncoder(clip) if clip is not None else _HandleEncoder(text_encoder)
