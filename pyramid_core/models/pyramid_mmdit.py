"""The SD3-medium-style pyramid MMDiT (``rain1011/pyramid-flow-sd3``).

``num_layers`` joint blocks (separate image/text weights, joint attention); the last block
only reads the text (``context_pre_only``). Latents enter through a 2x2 patch convolution
plus a fixed 2-D sin-cos table cropped from a ``pos_embed_max_size``-square grid (a
persistent buffer of the released checkpoint); time is a head-wide RoPE over the frame index.

See :mod:`pyramid_core.models.dit_tokens` for the ``sample`` layout and the two streams.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .dit_layers import (
    AdaModulation,
    AttentionProjections,
    FeedForward,
    PyramidDiTMixin,
    RUNTIME_CONFIG_KEYS,
    TimestepTextEmbedding,
    rope_angles,
    run_block,
)
from .dit_tokens import TokenLayout, drop_padding_columns, joint_attention, normalize_sample

QK_NORM_EPS = 1e-5  # SD3 keeps the default eps on its query/key norms


# ----------------------------------------------------------------------------------------
# Patch embedding with the SD3 sin-cos table
# ----------------------------------------------------------------------------------------


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``pos: (M,)`` float64 -> ``(M, dim)`` ``[sin(pos * w), cos(pos * w)]``, ``w_i = 10000^(-2i/dim)``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = pos[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (M, dim)


def sincos_table(dim: int, grid: int, base_size: int) -> torch.Tensor:
    """SD3's 2-D sin-cos table, ``(1, grid * grid, dim)`` float32, rows in (y, x) order.

    Coordinates are ``arange(grid) * base_size / grid``; the first half of the channels
    encodes x, the second half y (the released buffer's layout).
    """
    coords = torch.arange(grid, dtype=torch.float64) * base_size / grid  # (grid,)
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (grid, grid) each
    table = torch.cat([_sincos_1d(dim // 2, x.reshape(-1)), _sincos_1d(dim // 2, y.reshape(-1))], dim=1)
    return table.float()[None]  # (1, grid*grid, dim)


class PatchEmbedSinCos(nn.Module):
    """2x2 patch convolution plus the cropped (and, for history clips, resized) sin-cos table.

    Stored as ``pos_embed.proj`` and the persistent buffer ``pos_embed.pos_embed``.
    """

    def __init__(self, in_channels: int, dim: int, patch: int, max_size: int, base_size: int, interp_history: bool):
        super().__init__()
        self.patch, self.max_size, self.interp_history = patch, max_size, interp_history
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", sincos_table(dim, max_size, base_size), persistent=True)

    def position_table(self, height: int, width: int, ref_height: int, ref_width: int) -> torch.Tensor:
        """``(height * width, D)`` table of a ``height x width`` patch grid.

        The table is the centre crop of the ``ref`` grid (the noisy clip's) resized bilinearly
        to the clip's grid when ``interp_history``, else the centre crop of its own size.
        """
        if not self.interp_history:
            ref_height, ref_width = height, width
        if max(ref_height, ref_width) > self.max_size:
            raise ValueError(
                f"a {ref_height}x{ref_width} patch grid exceeds pos_embed_max_size={self.max_size}; "
                f"use a latent of at most {self.max_size * self.patch} pixels per side"
            )
        top, left = (self.max_size - ref_height) // 2, (self.max_size - ref_width) // 2
        table = self.pos_embed.view(self.max_size, self.max_size, -1)  # (M, M, D)
        table = table[top : top + ref_height, left : left + ref_width]  # (h_ref, w_ref, D)
        if (height, width) != (ref_height, ref_width):
            table = F.interpolate(table.permute(2, 0, 1)[None], size=(height, width), mode="bilinear")[0]  # (D, h, w)
            table = table.permute(1, 2, 0)  # (h, w, D)
        return table.reshape(height * width, -1)  # (h*w, D)

    def forward(self, clip: torch.Tensor, ref_hw: tuple[int, int]) -> torch.Tensor:
        """Args:
            clip: ``(B, C, T, H, W)`` latents.
            ref_hw: latent height and width of the entry's noisy clip.

        Returns:
            ``(B, T * H/p * W/p, D)`` tokens in (t, y, x) order.
        """
        b, _, t, h, w = clip.shape
        frames = clip.transpose(1, 2).flatten(0, 1)  # (B*T, C, H, W)
        tokens = self.proj(frames).flatten(2).transpose(1, 2)  # (B*T, h*w, D)
        table = self.position_table(h // self.patch, w // self.patch, ref_hw[0] // self.patch, ref_hw[1] // self.patch)
        tokens = tokens + table.to(tokens.dtype)  # (B*T, h*w, D)
        return tokens.reshape(b, -1, tokens.shape[-1])  # (B, T*h*w, D)


# ----------------------------------------------------------------------------------------
# Joint block
# ----------------------------------------------------------------------------------------


class MMDiTBlock(nn.Module):
    """SD3 joint block; with ``context_pre_only`` the text stream is only read (last block)."""

    def __init__(self, dim: int, heads: int, context_pre_only: bool = False):
        super().__init__()
        self.context_pre_only = context_pre_only
        self.norm1 = AdaModulation(dim, 6)
        self.norm1_context = AdaModulation(dim, 2 if context_pre_only else 6)
        self.attn = AttentionProjections(
            dim, heads, eps=QK_NORM_EPS, context=True, context_norm_name="norm_add", context_out=not context_pre_only
        )
        self.ff = FeedForward(dim)
        if not context_pre_only:
            self.ff_context = FeedForward(dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, temb: torch.Tensor, layout: TokenLayout):
        """Args:
            x: image stream ``(B, L_img, D)``.
            c: text stream ``(B * S, L_txt, D)``.
            temb: conditioning ``(B * S, D)``.
            layout: the call's token layout.

        Returns:
            Updated ``(x, c)``; ``c`` is returned unchanged by a ``context_pre_only`` block.
        """
        shift, scale, gate, shift_ff, scale_ff, gate_ff = self.norm1(temb)  # 6 x (B*S, D)
        x_in = layout.norm_modulate_image(x, shift, scale)  # (B, L_img, D)
        if self.context_pre_only:
            c_scale, c_shift = self.norm1_context(temb)  # 2 x (B*S, D)
        else:
            c_shift, c_scale, c_gate, c_shift_ff, c_scale_ff, c_gate_ff = self.norm1_context(temb)  # 6 x (B*S, D)
        c_in = layout.norm_modulate_text(c, c_shift, c_scale)  # (B*S, L_txt, D)
        attn_x, attn_c = joint_attention(self.attn, x_in, c_in, layout)  # (B, L_img, D), (B*S, L_txt, D) | None

        x = layout.gate_image(x, attn_x, gate)  # (B, L_img, D)
        x_ff = self.ff(layout.norm_modulate_image(x, shift_ff, scale_ff))  # (B, L_img, D)
        x = layout.gate_image(x, x_ff, gate_ff)  # (B, L_img, D)
        if self.context_pre_only:
            return x, c

        c = layout.gate_text(c, attn_c, c_gate)  # (B*S, L_txt, D)
        c_ff = self.ff_context(layout.norm_modulate_text(c, c_shift_ff, c_scale_ff))  # (B*S, L_txt, D)
        c = layout.gate_text(c, c_ff, c_gate_ff)  # (B*S, L_txt, D)
        return x, c


# ----------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------


class PyramidDiffusionMMDiT(PyramidDiTMixin, ModelMixin, ConfigMixin):
    """SD3 MMDiT for pyramidal flow matching.

    The defaults are the released model as the official loader builds it (including
    ``use_t5_mask``, ``add_temp_pos_embed``, ``temp_pos_embed_type='rope'`` that are not in
    its config.json), so ``from_config(released_config)`` reproduces it exactly.

    Args:
        sample_size: training latent size; sets the sin-cos base (``sample_size / patch_size``).
        patch_size: spatial patch p.
        in_channels: latent channels C.
        num_layers: joint blocks (the last one is ``context_pre_only``).
        attention_head_dim: head width K.
        num_attention_heads: heads H (model width D = H * K).
        caption_projection_dim: text-stream width (equals D in SD3).
        pooled_projection_dim: width of the pooled CLIP-L + CLIP-G embedding.
        pos_embed_max_size: side of the sin-cos grid (the buffer holds its square).
        max_num_frames: only used by a sin-cos temporal table, which no release has; kept for
            config compatibility.
        qk_norm: query/key norm, ``'rms_norm'``.
        pos_embed_type: spatial positions, ``'sincos'``.
        temp_pos_embed_type: temporal positions, ``'rope'`` (over the whole head).
        joint_attention_dim: width of the T5 features.
        use_temporal_causal: frame-causal attention.
        use_t5_mask: kept for config compatibility; ``encoder_attention_mask`` is always
            honoured when given, as in the reference.
        add_temp_pos_embed: apply the temporal RoPE.
        interp_condition_pos: history clips take the noisy clip's table, resized.
        use_flash_attn, use_gradient_checkpointing, gradient_checkpointing_ratio: runtime
            switches of the original loader; accepted, not stored.
    """

    _supports_gradient_checkpointing = True
    ignore_for_config = list(RUNTIME_CONFIG_KEYS)

    @register_to_config
    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 24,
        attention_head_dim: int = 64,
        num_attention_heads: int = 24,
        caption_projection_dim: int = 1536,
        pooled_projection_dim: int = 2048,
        pos_embed_max_size: int = 192,
        max_num_frames: int = 200,
        qk_norm: str = "rms_norm",
        pos_embed_type: str = "sincos",
        temp_pos_embed_type: str = "rope",
        joint_attention_dim: int = 4096,
        use_temporal_causal: bool = True,
        use_t5_mask: bool = True,
        add_temp_pos_embed: bool = True,
        interp_condition_pos: bool = True,
        use_flash_attn: bool = False,
        use_gradient_checkpointing: bool = False,
        gradient_checkpointing_ratio: float = 0.6,
    ):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        unsupported = {
            "qk_norm": (qk_norm, "rms_norm"),
            "pos_embed_type": (pos_embed_type, "sincos"),
            "temp_pos_embed_type": (temp_pos_embed_type, "rope"),
            "caption_projection_dim": (caption_projection_dim, dim),
        }
        for key, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(f"{key}={value!r} is not supported; the released SD3 model uses {supported!r}")

        self.pos_embed = PatchEmbedSinCos(
            in_channels, dim, patch_size, pos_embed_max_size, sample_size // patch_size, interp_condition_pos
        )
        self.time_text_embed = TimestepTextEmbedding(dim, pooled_projection_dim)
        self.context_embedder = nn.Linear(joint_attention_dim, caption_projection_dim)
        self.transformer_blocks = nn.ModuleList(
            MMDiTBlock(dim, num_attention_heads, context_pre_only=i == num_layers - 1) for i in range(num_layers)
        )
        self.norm_out = AdaModulation(dim, 2)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * in_channels)
        self.gradient_checkpointing = False

        self.init_weights()

    def forward(
        self,
        sample: list[list[torch.Tensor]],
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep_ratio: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Predict the flow velocity of the noisy clip of every pyramid entry.

        Same calling convention as :meth:`PyramidFluxTransformer.forward`.

        Args:
            sample: S entries, each a list of clips ``(B, C, T, H, W)``, noisy clip last.
            encoder_hidden_states: T5 features ``(B * S, L_txt, joint_attention_dim)``; row
                ``b * S + s`` belongs to row b of entry s.
            encoder_attention_mask: ``(B * S, L_txt)`` 1 for real tokens, 0 for padding, or None.
            pooled_projections: ``(B * S, pooled_projection_dim)``.
            timestep_ratio: ``(B * S,)`` timesteps on the 0-1000 scale.

        Returns:
            S tensors ``(B, C, T, H, W)``: the prediction for each entry's noisy clip.
        """
        cfg = self.config
        entries = normalize_sample(sample)
        encoder_hidden_states, encoder_attention_mask = drop_padding_columns(encoder_hidden_states,
                                                                             encoder_attention_mask)
        text_len = encoder_hidden_states.shape[1]

        def build() -> TokenLayout:
            layout = TokenLayout(entries, cfg.patch_size, encoder_attention_mask, text_len,
                                 frame_causal=cfg.use_temporal_causal)
            if cfg.add_temp_pos_embed:
                layout.set_rope(rope_angles(layout.positions[:, :1], [cfg.attention_head_dim]))  # (L_img, K/2)
            return layout

        with torch.no_grad():
            layout = self.token_layout(self.cached_layout(entries, encoder_attention_mask, text_len, build))
        layout.check_rows(encoder_hidden_states, pooled_projections, timestep_ratio)

        temb = self.time_text_embed(timestep_ratio, pooled_projections)  # (B*S, D)
        c = self.context_embedder(encoder_hidden_states)  # (B*S, L_txt, D)
        tokens = [self.pos_embed(clip.to(c.dtype), clips[-1].shape[-2:]) for clips in entries for clip in clips]  # [(B, L_j, D)]
        x = layout.scatter_image(torch.cat(tokens, dim=1))  # (B, L_img, D)

        for block in self.transformer_blocks:
            x, c = run_block(self, block, x, c, temb, layout)  # (B, L_img, D), (B*S, L_txt, D)

        scale, shift = self.norm_out(temb)  # 2 x (B*S, D)
        x = layout.norm_modulate_image(x, shift, scale)  # (B, L_img, D)
        x = self.proj_out(x)  # (B, L_img, p*p*C)
        return layout.unpack_output(x, cfg.patch_size)  # S x (B, C, T, H, W)
