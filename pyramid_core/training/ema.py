"""Exponential moving average of a model's trainable weights, kept in fp32."""

from __future__ import annotations

import torch
from torch import nn


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor (FSDP parameters are DTensors; their local shard is what we average)."""
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    """``shadow = decay * shadow + (1 - decay) * weight`` after every optimizer step.

    Works on plain, DDP and FSDP models (under FSDP each rank averages its own shard).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: _full(p).detach().float().clone()
                       for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(_full(p).detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the model: {sorted(missing)[:3]} ...")
        self.decay = state["decay"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)

    def averaged_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state_dict`` (full tensors) with the averaged weights swapped in, in each tensor's dtype."""
        return {k: (self.shadow[k].to(v.dtype) if k in self.shadow and self.shadow[k].shape == v.shape else v)
                for k, v in state_dict.items()}
