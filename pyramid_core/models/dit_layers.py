"""Building blocks shared by both pyramid DiTs (miniFLUX and SD3 MMDiT).

Each block here exists once; the two model files only compose them. Submodule names
(``linear``, ``net.0.proj``, ``to_out.0`` ...) follow the released checkpoints, so
state dicts load unchanged.

Shape letters: N rows of a stream, L tokens, D model width, H heads, K head width,
S pyramid entries (stages / columns) in one call, T flattened tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention.plan import tensor_version
from .fused import rms_norm_rope

# Every adaptive LayerNorm in both families normalises without affine terms at this eps.
ADA_NORM_EPS = 1e-6
TIMESTEP_CHANNELS = 256  # width of the sinusoidal timestep features
ROPE_THETA = 10000.0


# ----------------------------------------------------------------------------------------
# Conditioning: timestep + pooled text
# ----------------------------------------------------------------------------------------


def timestep_features(timestep: torch.Tensor, channels: int = TIMESTEP_CHANNELS) -> torch.Tensor:
    """Sinusoidal features of (fractional) timesteps, cosines first.

    Args:
        timestep: ``(N,)`` timesteps on the 0-1000 scale.
        channels: even feature width.

    Returns:
        ``(N, channels)`` float32 ``[cos(t * f), sin(t * f)]`` with
        ``f_i = 10000 ** (-i / (channels / 2))``.
    """
    half = channels // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    )  # (channels/2,)
    angles = timestep.float()[:, None] * freqs[None, :]  # (N, channels/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (N, channels)


class TwoLayerMLP(nn.Module):
    """``linear_2(silu(linear_1(x)))``: the timestep and pooled-text embedders."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (N, in_dim)`` -> ``(N, dim)``."""
        return self.linear_2(F.silu(self.linear_1(x)))  # (N, D)


class TimestepTextEmbedding(nn.Module):
    """The conditioning vector of every block: embed(timestep) + embed(pooled text)."""

    def __init__(self, dim: int, pooled_dim: int):
        super().__init__()
        self.timestep_embedder = TwoLayerMLP(TIMESTEP_CHANNELS, dim)
        self.text_embedder = TwoLayerMLP(pooled_dim, dim)

    def forward(self, timestep: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Args:
            timestep: ``(N,)`` on the 0-1000 scale.
            pooled: ``(N, pooled_dim)`` pooled text embedding.

        Returns:
            ``(N, D)``.
        """
        t = timestep_features(timestep).to(pooled.dtype)  # (N, 256)
        return self.timestep_embedder(t) + self.text_embedder(pooled)  # (N, D)


# ----------------------------------------------------------------------------------------
# Norms and modulation
# ----------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMS norm over the last axis with a learned gain (used on each attention head)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (..., dim)`` -> same shape, the weight's dtype (fp32 statistics). The blocks call
        :func:`~.fused.rms_norm_rope` with this module's weight instead, to fuse RoPE in."""
        return rms_norm_rope(x, self.weight, self.eps, None)


class AdaModulation(nn.Module):
    """``silu(cond) -> linear`` split into ``num_params`` vectors of width ``dim``.

    Stored as ``<name>.linear``; which vector is a shift, scale or gate is decided by the
    caller (the released checkpoints fix the order per use).
    """

    def __init__(self, dim: int, num_params: int):
        super().__init__()
        self.num_params = num_params
        self.linear = nn.Linear(dim, num_params * dim)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``cond: (N, D)`` -> ``num_params`` tensors ``(N, D)``."""
        return self.linear(F.silu(cond)).chunk(self.num_params, dim=-1)


# ----------------------------------------------------------------------------------------
# Feed-forward
# ----------------------------------------------------------------------------------------


class _GeluProjection(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """``Linear(D, 4D) -> GELU(tanh) -> Linear(4D, D)``, stored as ``net.0.proj`` / ``net.2``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # net.1 is a parameter-free slot (dropout in the original) kept for the key names.
        self.net = nn.ModuleList([_GeluProjection(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (..., D)`` -> ``(..., D)``."""
        for layer in self.net:
            x = layer(x)
        return x


# ----------------------------------------------------------------------------------------
# Attention projections
# ----------------------------------------------------------------------------------------


class AttentionProjections(nn.Module):
    """Q/K/V projections with per-head RMS norm, optionally a second set for the text stream.

    The attention itself is not here: :class:`~pyramid_core.models.dit_tokens.TokenLayout`
    packs the projected tokens of both streams into sequences and calls
    :func:`pyramid_core.attention.varlen_attention`.

    Args:
        dim: model width D.
        heads: number of heads H (K = D / H).
        eps: RMS-norm eps of the query/key norms.
        context: also create ``add_{q,k,v}_proj`` and their norms for the text stream.
        context_norm_name: prefix of the text-stream norms; the released checkpoints spell it
            ``norm_added`` (miniFLUX) or ``norm_add`` (SD3).
        out: create the image output projection ``to_out.0``.
        context_out: create the text output projection ``to_add_out``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        eps: float,
        context: bool = False,
        context_norm_name: str = "norm_added",
        out: bool = True,
        context_out: bool = False,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model width {dim} is not divisible by {heads} heads")
        self.heads = heads
        head_dim = dim // heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(head_dim, eps), RMSNorm(head_dim, eps)
        self._context_norms = None
        if context:
            self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, dim) for _ in range(3))
            self._context_norms = (f"{context_norm_name}_q", f"{context_norm_name}_k")
            for name in self._context_norms:
                self.add_module(name, RMSNorm(head_dim, eps))
        if out:
            self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        if context_out:
            self.to_add_out = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1))  # (..., H, K)

    def project(self, x: torch.Tensor, rotations: torch.Tensor | None = None):
        """Image-stream (or joint single-stream) tokens ``(..., L, D)`` -> q, k, v
        ``(..., L, H, K)``; q and k RMS-normed and, with ``rotations`` ``(L, K / 2, 2)``,
        rotated, in one fused pass each (:func:`~.fused.rms_norm_rope`)."""
        q = rms_norm_rope(self._heads(self.to_q(x)), self.norm_q.weight, self.norm_q.eps, rotations)  # (..., H, K)
        k = rms_norm_rope(self._heads(self.to_k(x)), self.norm_k.weight, self.norm_k.eps, rotations)  # (..., H, K)
        v = self._heads(self.to_v(x))  # (..., H, K)
        return q, k, v

    def project_context(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text-stream tokens ``(..., D)`` -> q, k, v ``(..., H, K)`` (normed, never rotated:
        text sits at position 0)."""
        norm_q, norm_k = (getattr(self, name) for name in self._context_norms)
        q = rms_norm_rope(self._heads(self.add_q_proj(c)), norm_q.weight, norm_q.eps, None)  # (..., H, K)
        k = rms_norm_rope(self._heads(self.add_k_proj(c)), norm_k.weight, norm_k.eps, None)  # (..., H, K)
        v = self._heads(self.add_v_proj(c))  # (..., H, K)
        return q, k, v


# ----------------------------------------------------------------------------------------
# Rotary position embedding
# ----------------------------------------------------------------------------------------


def rope_angles(positions: torch.Tensor, axes_dims: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Rotation angles of a multi-axis RoPE.

    Args:
        positions: ``(L, len(axes_dims))`` float positions, one column per axis.
        axes_dims: head channels given to each axis (even; they sum to K).

    Returns:
        ``(L, K / 2)`` float64 angles; axis ``a`` owns ``axes_dims[a] / 2`` consecutive
        channel pairs with frequencies ``theta ** (-2i / axes_dims[a])``.
    """
    angles = []
    for axis, dim in enumerate(axes_dims):
        if dim % 2:
            raise ValueError(f"RoPE axis widths must be even, got {list(axes_dims)}")
        freqs = ROPE_THETA ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
        angles.append(positions[:, axis].double()[:, None] * freqs[None, :])  # (L, dim/2)
    return torch.cat(angles, dim=-1)  # (L, K/2)


def rope_rotations(angles: torch.Tensor) -> torch.Tensor:
    """``(L, K / 2)`` angles -> ``(L, K / 2, 2)`` fp32 ``[cos, sin]`` (computed in float64).

    Real tables rather than complex64 rotations: the rotation is then plain elementwise
    arithmetic that inductor fuses with its neighbours (it cannot fuse complex ops).
    """
    return torch.stack([angles.cos(), angles.sin()], dim=-1).float()  # (L, K/2, 2)


def identity_rotations(count: int, like: torch.Tensor) -> torch.Tensor:
    """``(count, K / 2, 2)`` rotations by 0 (cos 1, sin 0), shaped and placed like ``like``."""
    identity = torch.zeros(count, *like.shape[1:], dtype=like.dtype, device=like.device)
    identity[..., 0] = 1.0
    return identity


# ----------------------------------------------------------------------------------------
# Model-level helpers
# ----------------------------------------------------------------------------------------


# Keys of the original loader's configs that are runtime switches, not architecture: the
# models accept them (so those configs load) but keep them out of their own config.
RUNTIME_CONFIG_KEYS = ("use_flash_attn", "use_gradient_checkpointing", "gradient_checkpointing_ratio")


def drop_runtime_keys(config: dict) -> dict:
    """``config`` without :data:`RUNTIME_CONFIG_KEYS` (spares diffusers' "unexpected key" warning)."""
    return {k: v for k, v in config.items() if k not in RUNTIME_CONFIG_KEYS}


def run_block(model: nn.Module, block: nn.Module, *args):
    """Call ``block(*args)``, through the model's checkpointing function when diffusers'
    ``enable_gradient_checkpointing()`` has switched it on and gradients are being recorded."""
    if torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False):
        return model._gradient_checkpointing_func(block, *args)
    return block(*args)


def init_dit_weights(model: nn.Module, conditioning: list[nn.Linear], outputs: list[nn.Module]) -> None:
    """Training-from-scratch initialisation shared by both DiTs.

    Xavier-uniform weights and zero biases everywhere (convolutions as flattened linears),
    N(0, 0.02) for the conditioning projections, and zeros for every adaptive modulation and
    the output layers, so that each block starts as the identity (adaLN-Zero).
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for linear in conditioning:
        nn.init.normal_(linear.weight, std=0.02)
    zeroed = [m for m in model.modules() if isinstance(m, AdaModulation)] + list(outputs)
    for module in zeroed:
        for param in module.parameters():
            nn.init.zeros_(param)


class PyramidDiTMixin:
    """What both pyramid DiTs share around their own layers (mixed in before ModelMixin).

    Configs written by the official loader carry runtime switches (``use_flash_attn``,
    gradient checkpointing) that are not architecture: they are dropped on load. Both models
    name their conditioning and output layers alike, so one initialisation serves both, and
    both let a parallel runtime swap the token layout their blocks run on.
    """

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        return super().extract_init_dict(drop_runtime_keys(config_dict), **kwargs)

    _layout_hook = None
    _layout_cache = None            # (key, mask, its version, a copy of it, TokenLayout) of the last call

    def cached_layout(self, entries, mask: torch.Tensor | None, text_len: int, build):
        """``build()``'s :class:`TokenLayout`, or the last call's when this call has the same clip
        shapes, device and text mask: every step of a stage does (the layout, its RoPE tables,
        packing index and frame ids are then built once per stage, not once per step).

        The mask is recognised by identity first (the same unmodified tensor object: no host
        sync, which is what the samplers pass), else by value (one sync)."""
        key = (tuple(tuple(tuple(clip.shape) for clip in clips) for clips in entries), text_len,
               str(entries[0][-1].device), None if mask is None else (tuple(mask.shape), mask.dtype))
        cached = self._layout_cache
        if cached is not None and cached[0] == key:
            if mask is None or (mask is cached[1] and tensor_version(mask) == cached[2]) or torch.equal(mask, cached[3]):
                return cached[4]
        layout = build()
        self._layout_cache = (key, mask, None if mask is None else tensor_version(mask),
                              None if mask is None else mask.clone(), layout)
        return layout

    def set_layout_hook(self, hook) -> None:
        """Run later calls on ``hook(layout)`` instead of each call's :class:`TokenLayout`
        (sequence parallelism installs its sharded layout this way); None restores the plain one."""
        self._layout_hook = hook

    def token_layout(self, layout):
        """The layout the blocks of this call run on (see :meth:`set_layout_hook`)."""
        return layout if self._layout_hook is None else self._layout_hook(layout)

    def init_weights(self) -> None:
        """adaLN-Zero initialisation for training from scratch (see :func:`init_dit_weights`)."""
        embed = self.time_text_embed
        init_dit_weights(
            self,
            conditioning=[embed.timestep_embedder.linear_1, embed.timestep_embedder.linear_2,
                          embed.text_embedder.linear_1, embed.text_embedder.linear_2, self.context_embedder],
            outputs=[self.proj_out],
        )
