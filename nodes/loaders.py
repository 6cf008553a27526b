"""Loaders: the pyramid DiT, the causal video VAE, the official text encoders, DiT LoRAs."""

from __future__ import annotations

import logging

import torch
import comfy.lora
import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..pyramid_core.compile import COMPILE_MODES, check_compile_available, compile_dit
from ..pyramid_core.models.block_swap import transformer_blocks
from ..pyramid_core.loading import check_dtype_supported, kind_from_headers, load_dit, load_vae, model_kind
from ..pyramid_core.models.text_encoders import PyramidTextEncoder, detect_text_encoder_family
from ..pyramid_core.variants import VARIANTS, choose_variant
from ._runtime import (
    BUILTIN_PREVIEW,
    OFFLOAD_MODES,
    OFFLOAD_TOOLTIP,
    DiTType,
    TextEncoderType,
    VAEType,
    check_model_input,
    load_preview_factors,
    make_handle,
    model_choices,
    preview_choices,
    queued_input,
    resolve_model_path,
    text_encoder_folders,
)

CATEGORY = "PyramidFlow/loaders"
log = logging.getLogger("pyramid_flow")
PRECISIONS = ("bf16", "fp16", "fp32", "fp8_e4m3fn")


class PyramidFlowDiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowDiTLoader",
            display_name="Pyramid Flow DiT Loader",
            category=CATEGORY,
            description="Loads a Pyramid Flow diffusion transformer (miniFLUX or SD3) from models/diffusion_models.",
            inputs=[
                io.Combo.Input("dit_name", options=model_choices("diffusion_models", "diffusion_transformer_"),
                               tooltip="A single .safetensors file in models/diffusion_models, or an official "
                                       "folder (e.g. pyramid-flow-miniflux/diffusion_transformer_384p) placed there."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="bf16",
                               tooltip="Compute dtype. fp8_e4m3fn stores the linear weights in 8 bits (half the "
                                       "memory of bf16) and computes in bf16. fp16 may overflow; fp32 is for CPUs."),
                io.Combo.Input("variant", options=["auto", *VARIANTS], default="auto",
                               tooltip="auto: miniFLUX or SD3 from the tensors; 384p, 768p or the 1024p image model "
                                       "from the folder/file name (a miniFLUX name that says none: 384p; SD3: 768p). "
                                       "The node shows what it chose and why; pick one here to override."),
                io.Combo.Input("offload", options=list(OFFLOAD_MODES), default="auto", tooltip=OFFLOAD_TOOLTIP),
                io.Combo.Input("compile", options=["off", *COMPILE_MODES], default="off", optional=True,
                               tooltip="torch.compile the transformer blocks (inductor, dynamic shapes: the stages "
                                       "and the growing history do not recompile). The first video compiles for "
                                       "a while; later ones run faster. 'max-autotune...' compiles longer."),
                io.Combo.Input("preview", options=preview_choices(), default=BUILTIN_PREVIEW, optional=True,
                               tooltip="Colours of the samplers' latent previews: built in for the released VAE, or "
                                       "a file made for your VAE by 'python -m pyramid_core fit-preview' and put in "
                                       "models/vae."),
                io.Int.Input("block_swap", default=0, min=0, max=64, optional=True,
                             tooltip="For small cards: keep the DiT's last N blocks in system memory and stream each "
                                     "to the GPU just before it runs (the same video; slower the more are swapped). "
                                     "0 = off."),
            ],
            outputs=[DiTType.Output(display_name="dit")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, dit_name) -> bool | str:
        # Only dit_name is named (ComfyUI repeats a refusal under every input named here); the
        # variant picked on the node comes from the queued prompt (_runtime.queued_input).
        variant = queued_input(cls.hidden.unique_id, "variant") if cls.hidden is not None else None
        fits = None if variant in (None, "auto") else (lambda kind: choose_variant(kind, dit_name, variant))
        return check_model_input(("diffusion_models",), dit_name, ("flux", "mmdit"), "DiT Loader", fits_kind=fits)

    @classmethod
    def execute(cls, dit_name: str, precision: str, variant: str, offload: str, compile: str = "off",
                preview: str = BUILTIN_PREVIEW, block_swap: int = 0) -> io.NodeOutput:
        # everything that can be refused is, before the DiT loads
        factors = load_preview_factors(preview)
        path = resolve_model_path(("diffusion_models",), dit_name)
        compute, storage = ("bf16", "fp8_e4m3fn") if precision == "fp8_e4m3fn" else (precision, None)
        device = comfy.model_management.get_torch_device()
        check_dtype_supported(compute, device)
        if compile != "off":
            check_compile_available(device)
            if block_swap:
                raise ValueError("block_swap and compile do not go together yet: set one of them to off/0")
        kind = kind_from_headers(path)             # None for pickled weights: known once loaded
        if kind is not None:                       # a variant of the other family: refused unloaded
            chosen, why = choose_variant(kind, dit_name, variant)
        model = load_dit(path, dtype=compute, weight_dtype=storage)
        if compile != "off":
            compile_dit(model, mode=compile, device=device)
        if kind is None:
            chosen, why = choose_variant(model_kind(model), dit_name, variant)
        log.info("Pyramid Flow DiT %s: variant %s", dit_name, why)
        handle = make_handle(model, offload=offload, kind="dit", variant=chosen, preview=factors,
                             block_swap=min(block_swap, len(transformer_blocks(model))))
        return io.NodeOutput(handle,
                             ui=ui.PreviewText(f"variant {why}"))


class PyramidFlowVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowVAELoader",
            display_name="Pyramid Flow VAE Loader",
            category=CATEGORY,
            description="Loads Pyramid Flow's causal video VAE from models/vae.",
            inputs=[
                io.Combo.Input("vae_name", options=model_choices("vae", "causal_video_vae"),
                               tooltip="A single .safetensors file in models/vae, or an official causal_video_vae "
                                       "folder placed there."),
                io.Combo.Input("precision", options=["bf16", "fp16", "fp32"], default="bf16",
                               tooltip="VAE dtype; bf16 as the reference, fp32 on CPUs."),
            ],
            outputs=[VAEType.Output(display_name="vae")],
        )

    @classmethod
    def validate_inputs(cls, vae_name) -> bool | str:
        return check_model_input(("vae",), vae_name, ("vae",), "VAE Loader")

    @classmethod
    def execute(cls, vae_name: str, precision: str) -> io.NodeOutput:
        check_dtype_supported(precision, comfy.model_management.vae_device())
        model = load_vae(resolve_model_path(("vae",), vae_name), dtype=precision)
        return io.NodeOutput(make_handle(model, kind="vae"))


class PyramidFlowTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowTextEncoderLoader",
            display_name="Pyramid Flow Text Encoder Loader",
            category=CATEGORY,
            description="Loads the text encoders of an official Pyramid Flow folder (CLIP + T5). "
                        "With t5xxl + clip_l files, use the core DualCLIPLoader (type flux) instead.",
            inputs=[
                io.Combo.Input("folder", options=text_encoder_folders(),
                               tooltip="An official model folder (holding tokenizer/, text_encoder/, tokenizer_2/, "
                                       "text_encoder_2/) in models/text_encoders or models/diffusion_models."),
                io.Combo.Input("precision", options=["bf16", "fp32", "fp8_e4m3fn"], default="bf16",
                               tooltip="bf16 as the reference (T5 overflows in fp16); fp32 on CPUs. fp8_e4m3fn "
                                       "stores the linear weights in 8 bits (T5: about 4.7 GB instead of 9.5) and "
                                       "computes in bf16."),
                io.Combo.Input("device", options=["default", "cpu"], default="default", optional=True,
                               tooltip="cpu: the text encoders stay in system memory and run there (in fp32), "
                                       "leaving the GPU to the DiT and the VAE; a prompt is encoded once until it "
                                       "changes. default: ComfyUI's text encoder device."),
            ],
            outputs=[TextEncoderType.Output(display_name="text_encoder")],
        )

    @classmethod
    def validate_inputs(cls, folder) -> bool | str:
        if not isinstance(folder, str):
            return True
        try:
            detect_text_encoder_family(resolve_model_path(("text_encoders", "diffusion_models"), folder))
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, folder: str, precision: str, device: str = "default") -> io.NodeOutput:
        on_cpu = device == "cpu"
        # On the CPU in fp32: CPUs without bf16 units (most) emulate bf16 matmuls far slower.
        compute = "fp32" if precision == "fp32" or on_cpu else "bf16"
        if not on_cpu:
            check_dtype_supported(compute, comfy.model_management.text_encoder_device())
        path = resolve_model_path(("text_encoders", "diffusion_models"), folder)
        family = detect_text_encoder_family(path)
        encoder = PyramidTextEncoder.from_pretrained(
            path, family=family, dtype=torch.float32 if compute == "fp32" else torch.bfloat16,
            weight_dtype=torch.float8_e4m3fn if precision == "fp8_e4m3fn" else None)
        return io.NodeOutput(make_handle(encoder, kind="text", family=family, on_cpu=on_cpu))


def _lora_key_map(handle) -> dict[str, str]:
    """LoRA names (diffusers/peft/kohya spellings) -> weight keys of the patched holder."""
    key_map = {}
    for name, module in handle.patcher.model.diffusion_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            target = f"diffusion_model.{name}.weight"
            for prefix in ("", "transformer.", "base_model.model.", "diffusion_model.", "unet."):
                key_map[prefix + name] = target
            key_map["lora_unet_" + name.replace(".", "_")] = target
    return key_map


class PyramidFlowLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PyramidFlowLoraLoader",
            display_name="Pyramid Flow LoRA Loader",
            category=CATEGORY,
            description="Applies a LoRA to a Pyramid Flow DiT (diffusers/peft lora_A/lora_B or kohya lora_down/lora_up "
                        "names). The weights are patched when the DiT loads, the original DiT is left unchanged.",
            inputs=[
                DiTType.Input("dit", tooltip="The DiT to apply the LoRA to."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A LoRA .safetensors file in models/loras trained on this DiT."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Multiplier of the LoRA's change; 0 turns it off, negative inverts it."),
            ],
            outputs=[DiTType.Output(display_name="dit")],
        )

    @classmethod
    def execute(cls, dit, lora_name: str, strength: float) -> io.NodeOutput:
        lora = comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("loras", lora_name), safe_load=True)
        patched = dit.clone()
        patches = comfy.lora.load_lora(lora, _lora_key_map(patched), log_missing=False)
        if not patches:
            raise ValueError(f"{lora_name} has no weights that match this DiT's layers: is it a LoRA for "
                             f"{dit.variant.name if dit.variant else 'Pyramid Flow'}?")
        applied = patched.patcher.add_patches(patches, strength)
        if len(applied) < len(patches):
            raise ValueError(f"{lora_name}: {len(patches) - len(applied)} LoRA layers do not fit this DiT")
        return io.NodeOutput(patched)
