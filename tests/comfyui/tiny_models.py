"""Tiny checkpoints for the real-ComfyUI tests, and a ComfyUI CLIP of tiny weights.

The checkpoint writers and the workflow shrinking live in ``scripts/tiny_checkpoints.py``
(the demo uses them too); the ``tiny_comfyui`` fixture is in ``tests/conftest.py``. The
core DualCLIPLoader always builds a full-size T5-XXL
(4.7 B parameters) whatever the file holds, so no tiny file can go through it;
``build_tiny_comfy_clip`` builds a ComfyUI ``CLIP`` object of the flux layout with tiny
transformers instead (in-process tests).
"""

from __future__ import annotations

import torch

from tiny_checkpoints import (  # noqa: F401  (re-exported for the test modules)
    CLIP_WIDTH, FRAMES, HEIGHT, MODEL_FILES, TINY_TEXT_ENCODERS, WIDTH, WORKFLOWS, load_api_workflow, shrink,
    tiny_clip, tiny_t5, video_length, write_stand_ins, write_tiny_dit, write_tiny_lora, write_tiny_text_encoders,
    write_tiny_vae,
)


def build_tiny_comfy_clip():
    """A ComfyUI ``CLIP`` of the flux layout (``clip_l`` + ``t5xxl``) with the tiny weights.

    Needs ComfyUI importable (its folder on ``sys.path``). Returns ``(clip, (clip_pair, t5_pair))``
    with the transformers models it was loaded from, to compare against.
    """
    import comfy.clip_model
    import comfy.sd
    import comfy.sd1_clip
    import comfy.text_encoders.t5

    clip_pair, t5_pair = tiny_clip(), tiny_t5()
    clip_config = clip_pair[1].config.to_dict()
    t5_config = dict(t5_pair[1].config.to_dict(), dense_act_fn="gelu_pytorch_tanh", is_gated_act=True, model_type="t5")

    class TinyFluxClipModel(torch.nn.Module):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__()
            self.clip_l = comfy.sd1_clip.SDClipModel(
                device=device, dtype=dtype, textmodel_json_config=dict(clip_config), return_projected_pooled=False,
                special_tokens={"start": 0, "end": 1, "pad": 1}, model_options=model_options)
            self.t5xxl = comfy.sd1_clip.SDClipModel(
                device=device, dtype=dtype, textmodel_json_config=dict(t5_config),
                model_class=comfy.text_encoders.t5.T5, special_tokens={"end": 1, "pad": 0},
                model_options=model_options)
            self.dtypes = {dtype}

        def set_clip_options(self, options):
            self.clip_l.set_clip_options(options)
            self.t5xxl.set_clip_options(options)

        def reset_clip_options(self):
            self.clip_l.reset_clip_options()
            self.t5xxl.reset_clip_options()

        def encode_token_weights(self, tokens):
            t5_out, _ = self.t5xxl.encode_token_weights(tokens["t5xxl"])
            _, pooled = self.clip_l.encode_token_weights(tokens["l"])
            return t5_out, pooled

    class TinyTokenizer:
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            self.clip_l = type("Tok", (), {"tokenizer": clip_pair[0]})()
            self.t5xxl = type("Tok", (), {"tokenizer": t5_pair[0]})()

        def state_dict(self):
            return {}

    target = type("Target", (), {"params": {}, "clip": TinyFluxClipModel, "tokenizer": TinyTokenizer})()
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    clip_state = {k if k.startswith("text_model.") else "text_model." + k: v
                  for k, v in clip_pair[1].state_dict().items() if not k.endswith("position_ids")}
    clip_state["text_projection.weight"] = torch.eye(CLIP_WIDTH)      # CLIP-L without projection
    vocab = clip_state["text_model.embeddings.token_embedding.weight"]
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight
    clip_state["text_model.embeddings.token_embedding.weight"] = torch.cat(   # ComfyUI's CLIP has 49408 rows
        [vocab, torch.zeros(table.shape[0] - vocab.shape[0], vocab.shape[1])])
    missing, unexpected = clip.cond_stage_model.clip_l.transformer.load_state_dict(clip_state, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    t5_state = {k: v for k, v in t5_pair[1].state_dict().items() if k != "encoder.embed_tokens.weight"}
    missing, unexpected = clip.cond_stage_model.t5xxl.transformer.load_state_dict(t5_state, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return clip, (clip_pair, t5_pair)




# The older wrapper's fp8 files keep these in bf16 (its loader's params_to_keep) and store
# every other tensor, the Linear weights, as fp8 e4m3fn.
KEEP_IN_BF16 = ("pos_embedding", "norm_k", "norm_q", "norm_v", "norm_added_k", "norm_added_q", "bias")


def write_community_dit(models_dir, name: str, storage: str) -> "Path":
    """The tiny miniFLUX as the community single files store it: no config in the file, all
    bf16 (``storage="bf16"``), or fp8 e4m3fn Linear weights beside bf16 norms and biases."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from tiny_checkpoints import GOLDEN

    tensors = load_file(str(GOLDEN / "weights_flux_tiny.safetensors"))
    converted = {}
    for key, value in tensors.items():
        fp8 = storage == "fp8_e4m3fn" and value.ndim == 2 and not any(k in key for k in KEEP_IN_BF16)
        converted[key] = value.to(torch.float8_e4m3fn if fp8 else torch.bfloat16).contiguous()
    target = Path(models_dir) / "diffusion_models" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(converted, str(target))
    return target
