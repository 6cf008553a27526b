"""LoRA for the pyramid DiTs: add adapters for training (peft), export, load by merging.

File format (``.safetensors``), the diffusers/peft naming that diffusers' transformer LoRA
loaders and ComfyUI's LoRA loader read::

    transformer.<module>.lora_A.weight   (rank, in_features)
    transformer.<module>.lora_B.weight   (out_features, rank)
    transformer.<module>.alpha           () scalar, written by export_lora

``<module>`` is the Linear's name in the official checkpoint, e.g.
``transformer_blocks.0.attn.to_q`` or ``single_transformer_blocks.3.proj_mlp``. A layer's
update is ``W += scale * (alpha / rank) * B @ A``. ``alpha`` comes from the metadata key
``lora_adapter_metadata`` (JSON with ``r`` and ``lora_alpha``, as diffusers writes it); a
per-layer ``<module>.alpha`` scalar (kohya style) is also read; without either, alpha = rank.
The metadata also records ``pyramid_flow_model_class`` so a LoRA for the other DiT is
rejected by name. Loading needs no peft; training does (``pip install peft``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "LORA_TARGET_PATTERN",
    "LoraLayer",
    "add_lora",
    "export_lora",
    "load_lora_into_dit",
    "lora_state_dict",
    "read_lora",
]

KEY_PREFIX = "transformer."
# Attention and feed-forward Linears of the double/single/MMDiT blocks of both DiTs (not the
# embedders, the adaLN modulations or the final projection).
LORA_TARGET_PATTERN = (
    r"(transformer_blocks|single_transformer_blocks)\.\d+\."
    r"(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)"
)
_KEY = re.compile(r"^(?:transformer\.)?(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|alpha)$")


@dataclass
class LoraLayer:
    """One adapted Linear: ``down`` = A ``(rank, in)``, ``up`` = B ``(out, rank)``."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self, scale: float = 1.0) -> torch.Tensor:
        """``scale * alpha / rank * B @ A`` in fp32, shaped like the Linear's weight."""
        return (self.up.float() @ self.down.float()) * (scale * self.alpha / self.rank)


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

def add_lora(model: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0,
             target_pattern: str = LORA_TARGET_PATTERN) -> nn.Module:
    """Freeze ``model`` and add trainable LoRA adapters (peft) to the attention/FF Linears.

    ``alpha`` defaults to ``rank`` (update scale 1). Returns the same module, changed in place.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError("LoRA training needs peft: pip install peft") from err
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    if not any(re.fullmatch(target_pattern, name) for name, m in model.named_modules() if isinstance(m, nn.Linear)):
        raise ValueError(f"no Linear of {type(model).__name__} matches the LoRA targets {target_pattern!r}")
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=dropout, target_modules=target_pattern,
                        init_lora_weights=True)
    model.requires_grad_(False)
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    model._pyramid_lora = {"r": rank, "lora_alpha": float(alpha or rank), "target_modules": target_pattern}
    return model


def lora_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapters of a :func:`add_lora` model in the file naming (``transformer.<module>.lora_A.weight``).

    ``state_dict`` (e.g. with EMA weights swapped in) defaults to ``model.state_dict()``.
    """
    state_dict = model.state_dict() if state_dict is None else state_dict
    out = {}
    for name, tensor in state_dict.items():
        match = re.fullmatch(r"(?P<module>.+)\.(?P<part>lora_[AB])\.[^.]+\.weight", name)
        if match:
            out[f"{KEY_PREFIX}{match['module']}.{match['part']}.weight"] = tensor.detach().cpu().contiguous()
    if not out:
        raise ValueError("the model has no LoRA adapters (train with lora_rank > 0)")
    return out


def export_lora(model: nn.Module, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None,
                dtype: torch.dtype | None = None) -> Path:
    """Write the adapters of ``model`` to ``path`` (atomic), with the metadata described above."""
    from safetensors.torch import save_file

    tensors = lora_state_dict(model, state_dict)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    info = getattr(model, "_pyramid_lora", None)
    if info is None:
        raise ValueError("export_lora needs a model prepared by add_lora")
    # Each layer's alpha as a scalar tensor too: loaders that ignore the metadata (ComfyUI's
    # LoRA loader among them) then scale the update exactly as load_lora_into_dit does.
    for key in [k for k in tensors if k.endswith(".lora_A.weight")]:
        tensors[key.removesuffix(".lora_A.weight") + ".alpha"] = torch.tensor(float(info["lora_alpha"]))
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(info),
                "pyramid_flow_model_class": type(model).__name__}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------

def read_lora(path: str | Path) -> tuple[dict[str, LoraLayer], dict[str, str]]:
    """``({module name: LoraLayer}, metadata)`` from a LoRA file; checks that A and B pair up."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise ValueError(f"{path} is not a readable safetensors LoRA file ({err})") from None
    default_alpha = None
    if "lora_adapter_metadata" in metadata:
        info = json.loads(metadata["lora_adapter_metadata"])
        default_alpha = float(info.get("lora_alpha", info.get("r")))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise ValueError(f"{path}: tensor {key!r} is not a LoRA weight "
                             "(expected transformer.<module>.lora_A.weight / lora_B.weight)")
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    if not parts:
        raise ValueError(f"{path} holds no LoRA weights")
    layers = {}
    for module, p in parts.items():
        if "lora_A.weight" not in p or "lora_B.weight" not in p:
            raise ValueError(f"{path}: {module} has only one of lora_A/lora_B")
        down, up = p["lora_A.weight"], p["lora_B.weight"]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise ValueError(f"{path}: {module} has lora_A {tuple(down.shape)} and lora_B {tuple(up.shape)}; "
                             "their ranks disagree (A is (rank, in), B is (out, rank))")
        alpha = float(p["alpha"]) if "alpha" in p else (default_alpha if default_alpha is not None else down.shape[0])
        layers[module] = LoraLayer(down, up, alpha)
    return layers, metadata


@torch.no_grad()
def load_lora_into_dit(model: nn.Module, path: str | Path, scale: float = 1.0) -> nn.Module:
    """Merge the LoRA at ``path`` into ``model``'s Linear weights (in place) and return ``model``.

    Every layer is checked before any weight changes, so a bad file leaves the model intact.
    Merge into a copy to keep the original; ``scale`` 0 is a no-op, negative values subtract.

    Raises:
        ValueError: the file is for the other DiT, names layers the model lacks, or has
            shapes that do not fit them.
    """
    layers, metadata = read_lora(path)
    trained_for = metadata.get("pyramid_flow_model_class")
    if trained_for and trained_for != type(model).__name__:
        raise ValueError(f"{path} is a LoRA for {trained_for}; this model is {type(model).__name__}")
    modules = dict(model.named_modules())
    missing = [name for name in layers if not isinstance(modules.get(name), nn.Linear)]
    if missing:
        raise ValueError(f"{path} adapts {len(missing)} layer(s) that {type(model).__name__} does not have, "
                         f"e.g. {missing[:3]}: it was trained for a different model or size")
    for name, layer in layers.items():
        weight = modules[name].weight
        if (layer.up.shape[0], layer.down.shape[1]) != tuple(weight.shape):
            raise ValueError(f"{path}: {name} is {tuple(weight.shape)} (out, in) but the LoRA is "
                             f"{(layer.up.shape[0], layer.down.shape[1])}: it was trained for a different model size")
    if scale == 0:
        return model
    for name, layer in layers.items():
        weight = modules[name].weight
        merged = weight.float() + layer.delta(scale).to(weight.device)
        weight.copy_(merged.to(weight.dtype))
    return model
