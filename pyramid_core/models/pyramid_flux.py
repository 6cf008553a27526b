"""The miniFLUX pyramid DiT (``rain1011/pyramid-flow-miniflux``).

FLUX-style: ``num_layers`` double-stream blocks (separate image/text weights, joint
attention) then ``num_single_layers`` single-stream blocks (one set of weights over text and
image tokens, attention and MLP in parallel). Positions are a 3-axis RoPE over (t, y, x);
latents enter as 2x2 patches of 16 channels (``in_channels = 64``) although the released
config says ``patch_size: 1`` -- that key only sizes the output projection.

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
from .dit_tokens import TokenLayout, drop_padding_columns, joint_attention, normalize_sample, patchify

LATENT_PATCH = 2  # spatial patch of the token packing, fixed by the released weights
QK_NORM_EPS = 1e-6


class FluxDoubleBlock(nn.Module):
    """Double-stream block: adaLN-Zero modulation, joint attention, one MLP per stream."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = AdaModulation(dim, 6)
        self.norm1_context = AdaModulation(dim, 6)
        self.attn = AttentionProjections(
            dim, heads, eps=QK_NORM_EPS, context=True, context_norm_name="norm_added", context_out=True
        )
        self.ff = FeedForward(dim)
        self.ff_context = FeedForward(dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, temb: torch.Tensor, layout: TokenLayout):
        """Args:
            x: image stream ``(B, L_img, D)``.
            c: text stream ``(B * S, L_txt, D)``.
            temb: conditioning ``(B * S, D)``.
            layout: the call's token layout.

        Returns:
            Updated ``(x, c)``, same shapes.
        """
        shift, scale, gate, shift_ff, scale_ff, gate_ff = self.norm1(temb)  # 6 x (B*S, D)
        c_shift, c_scale, c_gate, c_shift_ff, c_scale_ff, c_gate_ff = self.norm1_context(temb)  # 6 x (B*S, D)

        x_in = layout.norm_modulate_image(x, shift, scale)  # (B, L_img, D)
        c_in = layout.norm_modulate_text(c, c_shift, c_scale)  # (B*S, L_txt, D)
        attn_x, attn_c = joint_attention(self.attn, x_in, c_in, layout)  # (B, L_img, D), (B*S, L_txt, D)

        x = layout.gate_image(x, attn_x, gate)  # (B, L_img, D)
        x_ff = self.ff(layout.norm_modulate_image(x, shift_ff, scale_ff))  # (B, L_img, D)
        x = layout.gate_image(x, x_ff, gate_ff)  # (B, L_img, D)

        c = layout.gate_text(c, attn_c, c_gate)  # (B*S, L_txt, D)
        c_ff = self.ff_context(layout.norm_modulate_text(c, c_shift_ff, c_scale_ff))  # (B*S, L_txt, D)
        c = layout.gate_text(c, c_ff, c_gate_ff)  # (B*S, L_txt, D)
        return x, c


class FluxSingleBlock(nn.Module):
    """Single-stream block: shared weights over text and image tokens, attention || MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm = AdaModulation(dim, 3)
        self.proj_mlp = nn.Linear(dim, dim * mlp_ratio)
        self.proj_out = nn.Linear(dim * (1 + mlp_ratio), dim)
        self.attn = AttentionProjections(dim, heads, eps=QK_NORM_EPS, out=False)

    def forward(self, x: torch.Tensor, c: torch.Tensor, temb: torch.Tensor, layout: TokenLayout):
        """Same arguments and returns as :meth:`FluxDoubleBlock.forward`."""
        shift, scale, gate = self.norm(temb)  # 3 x (B*S, D)
        x_in = layout.norm_modulate_image(x, shift, scale)  # (B, L_img, D)
        c_in = layout.norm_modulate_text(c, shift, scale)  # (B*S, L_txt, D)
        z = layout.join(c_in, x_in)  # (T, D)

        q, k, v = self.attn.project(z, layout.joined_rope())  # (T, H, K), image tokens rotated
        attn = layout.attend(q, k, v).flatten(-2)  # (T, D)
        mlp = F.gelu(self.proj_mlp(z), approximate="tanh")  # (T, 4D)
        update_c, update_x = layout.split(self.proj_out(torch.cat([attn, mlp], dim=-1)))  # (B*S, L_txt, D), (B, L_img, D)

        x = layout.gate_image(x, update_x, gate)  # (B, L_img, D)
        c = layout.gate_text(c, update_c, gate)  # (B*S, L_txt, D)
        return x, c


class PyramidFluxTransformer(PyramidDiTMixin, ModelMixin, ConfigMixin):
    """miniFLUX DiT for pyramidal flow matching.

    The defaults are the released 384p/768p model (what the official loader builds), so
    ``PyramidFluxTransformer.from_config(released_config)`` reproduces it exactly.

    Args:
        patch_size: output patch of ``proj_out``; the released checkpoints use 1 (tokens are
            always 2x2 latent patches, see ``in_channels``).
        in_channels: channels of one token, 4 x latent channels (64 for 16-channel latents).
        num_layers: double-stream blocks.
        num_single_layers: single-stream blocks.
        attention_head_dim: head width K.
        num_attention_heads: heads H (model width D = H * K).
        joint_attention_dim: width of the T5 text features.
        pooled_projection_dim: width of the pooled CLIP embedding.
        axes_dims_rope: head channels of the (t, y, x) RoPE axes; they sum to K.
        use_temporal_causal: frame-causal attention (a token sees frames <= its own).
        interp_condition_pos: history clips take positions interpolated onto the noisy clip's
            grid; the released model was trained this way (the only supported value).
        use_flash_attn, use_gradient_checkpointing, gradient_checkpointing_ratio: runtime
            switches of the original loader; accepted so its configs load, not stored. The
            attention backend is chosen by :mod:`pyramid_core.attention`; use
            ``enable_gradient_checkpointing()`` for checkpointing.
    """

    _supports_gradient_checkpointing = True
    ignore_for_config = list(RUNTIME_CONFIG_KEYS)

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        num_layers: int = 8,
        num_single_layers: int = 16,
        attention_head_dim: int = 64,
        num_attention_heads: int = 30,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        axes_dims_rope: tuple[int, ...] = (16, 24, 24),
        use_temporal_causal: bool = True,
        interp_condition_pos: bool = True,
        use_flash_attn: bool = False,
        use_gradient_checkpointing: bool = False,
        gradient_checkpointing_ratio: float = 0.6,
    ):
        super().__init__()
        if patch_size != 1:
            raise ValueError(f"patch_size={patch_size}: miniFLUX checkpoints use patch_size 1 (2x2 packing is built in)")
        if in_channels % (LATENT_PATCH * LATENT_PATCH):
            raise ValueError(f"in_channels={in_channels} must be 4 x the latent channels")
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(f"axes_dims_rope {list(axes_dims_rope)} must sum to attention_head_dim={attention_head_dim}")
        if not interp_condition_pos:
            raise ValueError("interp_condition_pos=False is not supported: the released miniFLUX interpolates history positions")
        dim = num_attention_heads * attention_head_dim

        self.time_text_embed = TimestepTextEmbedding(dim, pooled_projection_dim)
        self.context_embedder = nn.Linear(joint_attention_dim, dim)
        self.x_embedder = nn.Linear(in_channels, dim)
        self.transformer_blocks = nn.ModuleList(FluxDoubleBlock(dim, num_attention_heads) for _ in range(num_layers))
        self.single_transformer_blocks = nn.ModuleList(
            FluxSingleBlock(dim, num_attention_heads) for _ in range(num_single_layers)
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

        Inference (one stage of one temporal unit): ``sample=[clips]`` with ``clips`` the
        history latents (oldest and lowest resolution first) followed by the noisy latent, all
        ``(B, 16, T_j, H_j, W_j)``; B is the CFG batch. Training: one list of clips per batch
        column, each column at its own stage and sequence length.

        Args:
            sample: S entries, each a list of clips ``(B, C, T, H, W)``, noisy clip last.
            encoder_hidden_states: T5 features ``(B * S, L_txt, joint_attention_dim)``; row
                ``b * S + s`` belongs to row b of entry s.
            encoder_attention_mask: ``(B * S, L_txt)`` 1 for real tokens, 0 for padding;
                None means no padding.
            pooled_projections: pooled CLIP embedding ``(B * S, pooled_projection_dim)``.
            timestep_ratio: ``(B * S,)`` timesteps on the 0-1000 scale.

        Returns:
            S tensors ``(B, C, T, H, W)``: the prediction for each entry's noisy clip.
        """
        entries = normalize_sample(sample)
        encoder_hidden_states, encoder_attention_mask = drop_padding_columns(encoder_hidden_states,
                                                                             encoder_attention_mask)
        text_len = encoder_hidden_states.shape[1]

        def build() -> TokenLayout:
            layout = TokenLayout(entries, LATENT_PATCH, encoder_attention_mask, text_len,
                                 frame_causal=self.config.use_temporal_causal)
            layout.set_rope(rope_angles(layout.positions, self.config.axes_dims_rope))  # (L_img, K/2)
            return layout

        with torch.no_grad():
            layout = self.token_layout(self.cached_layout(entries, encoder_attention_mask, text_len, build))
        layout.check_rows(encoder_hidden_states, pooled_projections, timestep_ratio)

        temb = self.time_text_embed(timestep_ratio, pooled_projections)  # (B*S, D)
        c = self.context_embedder(encoder_hidden_states)  # (B*S, L_txt, D)
        tokens = [patchify(clip, LATENT_PATCH) for clips in entries for clip in clips]  # [(B, L_j, 64)]
        x = self.x_embedder(layout.scatter_image(torch.cat(tokens, dim=1)).to(c.dtype))  # (B, L_img, D)

        for block in (*self.transformer_blocks, *self.single_transformer_blocks):
            x, c = run_block(self, block, x, c, temb, layout)  # (B, L_img, D), (B*S, L_txt, D)

        scale, shift = self.norm_out(temb)  # 2 x (B*S, D)
        x = layout.norm_modulate_image(x, shift, scale)  # (B, L_img, D)
        x = self.proj_out(x)  # (B, L_img, 64)
        return layout.unpack_output(x, LATENT_PATCH)  # S x (B, 16, T, H, W)

