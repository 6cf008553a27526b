"""CausalVideoVAE: the causal 3D VAE of Pyramid Flow (8x in space, 8x in time after frame 0).

Pixels (B, 3, 1 + 8k, H, W) in [-1, 1] encode to a Gaussian over latents
(B, 16, 1 + k, H/8, W/8); latents decode back to pixels. The constructor takes the keys of
the released ``causal_video_vae/config.json`` and builds modules with the checkpoint's
state-dict names, so the official weights load with ``strict=True``.

Long or large inputs can be processed in temporal chunks and/or spatial tiles; both are
arguments of :meth:`encode` / :meth:`decode`, not module state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ...numerics import NonFiniteOutputError, check_finite
from .causal_conv3d import CausalCache, CausalConv3d
from .chunking import run_chunked, temporal_chunks
from .decoder import CausalVaeDecoder
from .encoder import CausalVaeEncoder
from .posterior import DiagonalGaussian
from .tiling import TilePlan, run_tiled

_BLOCK_TYPES = {"encoder": "DownEncoderBlockCausal3D", "decoder": "UpDecoderBlockCausal3D"}

# ``tile_size=AUTO``: the largest tiles that fit the device's free memory (whole frames when they
# do), smaller ones after an out-of-memory error (``budget.py``).
AUTO = "auto"

# Called with (pieces done, pieces in all) after every temporal chunk of every tile; an
# exception raised in it (e.g. the user pressed Cancel) stops the work within one piece.
ProgressFn = Callable[[int, int], None]


def _ticker(progress: ProgressFn | None, total: int) -> Callable[[], None] | None:
    """A no-argument function reporting one more finished piece to ``progress``."""
    if progress is None:
        return None
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        progress(done, total)

    return tick


class CausalVideoVAE(ModelMixin, ConfigMixin):
    """Causal video VAE with the released checkpoint's layout.

    Config keys are the released ones. ``scaling_factor`` and ``sample_size`` are kept for
    compatibility but unused (latent normalisation lives in ``pyramid_core.latents``);
    ``encoder_type``/``decoder_type``, ``*_block_types``, ``encoder_double_z``,
    ``add_post_quant_conv`` and ``interpolate`` only accept the released values.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        encoder_in_channels: int = 3,
        encoder_out_channels: int = 16,
        encoder_layers_per_block: Sequence[int] = (2, 2, 2, 2),
        encoder_down_block_types: Sequence[str] = ("DownEncoderBlockCausal3D",) * 4,
        encoder_block_out_channels: Sequence[int] = (128, 256, 512, 512),
        encoder_spatial_down_sample: Sequence[bool] = (True, True, True, False),
        encoder_temporal_down_sample: Sequence[bool] = (True, True, True, False),
        encoder_block_dropout: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        encoder_act_fn: str = "silu",
        encoder_norm_num_groups: int = 32,
        encoder_double_z: bool = True,
        encoder_type: str = "causal_vae_conv",
        decoder_in_channels: int = 16,
        decoder_out_channels: int = 3,
        decoder_layers_per_block: Sequence[int] = (3, 3, 3, 3),
        decoder_up_block_types: Sequence[str] = ("UpDecoderBlockCausal3D",) * 4,
        decoder_block_out_channels: Sequence[int] = (128, 256, 512, 512),
        decoder_spatial_up_sample: Sequence[bool] = (True, True, True, False),
        decoder_temporal_up_sample: Sequence[bool] = (True, True, True, False),
        decoder_block_dropout: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        decoder_act_fn: str = "silu",
        decoder_norm_num_groups: int = 32,
        decoder_type: str = "causal_vae_conv",
        sample_size: int = 256,
        scaling_factor: float = 0.13025,
        add_post_quant_conv: bool = True,
        interpolate: bool = False,
        downsample_scale: int = 8,
    ) -> None:
        super().__init__()
        _check_supported(
            encoder_down_block_types, decoder_up_block_types, encoder_act_fn, decoder_act_fn,
            encoder_type, decoder_type, encoder_double_z, add_post_quant_conv, interpolate,
        )
        if encoder_out_channels != decoder_in_channels:
            raise ValueError(
                f"encoder_out_channels ({encoder_out_channels}) must equal decoder_in_channels ({decoder_in_channels})"
            )
        spatial = 2 ** sum(map(bool, encoder_spatial_down_sample))
        if spatial != 2 ** sum(map(bool, decoder_spatial_up_sample)) or spatial != downsample_scale:
            raise ValueError(
                f"spatial down/up sampling ({encoder_spatial_down_sample}, {decoder_spatial_up_sample}) "
                f"must both give downsample_scale={downsample_scale}"
            )
        self.encoder = CausalVaeEncoder(
            encoder_in_channels, encoder_out_channels, encoder_block_out_channels, encoder_layers_per_block,
            encoder_spatial_down_sample, encoder_temporal_down_sample, encoder_norm_num_groups, encoder_block_dropout,
        )
        self.decoder = CausalVaeDecoder(
            decoder_in_channels, decoder_out_channels, decoder_block_out_channels, decoder_layers_per_block,
            decoder_spatial_up_sample, decoder_temporal_up_sample, decoder_norm_num_groups, decoder_block_dropout,
        )
        self.quant_conv = CausalConv3d(2 * encoder_out_channels, 2 * encoder_out_channels, kernel_size=1)
        self.post_quant_conv = CausalConv3d(encoder_out_channels, encoder_out_channels, kernel_size=1)

    # ------------------------------------------------------------------ geometry

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel (8)."""
        return self.config.downsample_scale

    @property
    def temporal_factor(self) -> int:
        """Pixel frames per latent frame after the first (8)."""
        return 2 ** sum(map(bool, self.config.encoder_temporal_down_sample))

    @property
    def latent_channels(self) -> int:
        return self.config.encoder_out_channels

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T, H, W) of the latents for a pixel video of this size."""
        self._check_pixel_size(frames, height, width)
        return 1 + (frames - 1) // self.temporal_factor, height // self.spatial_factor, width // self.spatial_factor

    # ------------------------------------------------------------------ encode

    def encode(
        self, video: torch.Tensor, chunk_size: int | None = None, tile_size: int | str | None = None,
        progress: ProgressFn | None = None,
    ) -> DiagonalGaussian:
        """Posterior over latents for pixels in [-1, 1].

        Args:
            video: (B, 3, 1 + 8k, H, W), H and W multiples of 8; an image is one frame.
            chunk_size: encode in temporal chunks of this many pixel frames (a multiple of
                8) after a first chunk of ``1 + chunk_size``; None encodes all frames at once.
                Chunked and unchunked results agree to float rounding.
            tile_size: encode in overlapping square tiles of this many pixels (a multiple
                of 8) when the frame is larger; None disables tiling; ``"auto"`` picks them
                from the free memory (:data:`AUTO`). Tiles are blended, so the result
                differs a little from untiled encoding.
            progress: see :data:`ProgressFn`; pieces are tiles x temporal chunks.
        Returns:
            DiagonalGaussian with mean/logvar/std of shape (B, 16, 1 + k, H/8, W/8).
        """
        if video.ndim != 5 or video.shape[1] != self.config.encoder_in_channels:
            raise ValueError(
                f"encode expects pixels (B, {self.config.encoder_in_channels}, T, H, W), got {tuple(video.shape)}"
            )
        self._check_pixel_size(*video.shape[2:])
        if chunk_size is not None and (chunk_size < 1 or chunk_size % self.temporal_factor):
            raise ValueError(f"encode chunk_size must be a positive multiple of {self.temporal_factor} frames, got {chunk_size}")
        if tile_size == AUTO:
            from .budget import encode_fitting

            return encode_fitting(self, video, chunk_size, progress=progress)
        video = video.to(self.dtype)
        if video.device.type == "cpu" and not torch.is_grad_enabled():
            video = self._channels_last_encoder(video)
        plan = self._tile_plan(tile_size, video.shape[-2:], self.spatial_factor)
        tick = _ticker(progress, self._pieces(plan, video.shape, self.spatial_factor, chunk_size))
        encode_tile = lambda tile: self._run_pieces(self._encode_pass, tile, chunk_size, tick)  # noqa: E731
        if plan is not None:
            moments = run_tiled(encode_tile, video, plan, in_scale=self.spatial_factor, out_scale=1)
        else:
            moments = encode_tile(video)
        return DiagonalGaussian(moments)

    def _channels_last_encoder(self, video: torch.Tensor) -> torch.Tensor:
        """``video`` and the encoder's weights in the channels-last 3-D layout (the weights once).

        On the CPU oneDNN convolves channels-last tensors as they are, while a standard layout
        is first reordered into its blocked one: a full copy of the largest activation at every
        convolution. Measured encoding 9 frames at 256 px with the full-size VAE: peak memory
        -16%, the same speed, results equal to 1e-5. The decoder keeps the standard layout: its
        pixel shuffles would copy channels-last tensors and raise its peak instead.
        """
        if not self.encoder.conv_in.conv.weight.is_contiguous(memory_format=torch.channels_last_3d):
            self.encoder.to(memory_format=torch.channels_last_3d)
            self.quant_conv.to(memory_format=torch.channels_last_3d)
        return video.contiguous(memory_format=torch.channels_last_3d)

    def _encode_pass(self, video: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        return self.quant_conv(self.encoder(video, cache), cache)    # (B, 2*C_lat, T', h, w)

    # ------------------------------------------------------------------ decode

    def decode(
        self, latents: torch.Tensor, chunk_size: int | None = None, tile_size: int | str | None = None,
        progress: ProgressFn | None = None,
    ) -> torch.Tensor:
        """Pixels in about [-1, 1] from (un-normalised) latents; never modifies ``latents``.

        Args:
            latents: (B, 16, 1 + k, h, w).
            chunk_size: decode in temporal chunks of this many latent frames after a first
                chunk of ``1 + chunk_size`` (the reference pipeline uses 1 to save memory,
                else 2); None decodes all frames at once. Results agree to float rounding.
            tile_size: decode in overlapping square tiles of this many output pixels (a
                multiple of 8) when the frame is larger; None disables tiling; ``"auto"``
                picks them from the free memory (:data:`AUTO`).
            progress: see :data:`ProgressFn`; pieces are tiles x temporal chunks.
        Returns:
            (B, 3, 1 + 8k, 8h, 8w). Raises :class:`pyramid_core.numerics.NonFiniteOutputError`
            if they hold NaN or inf (an fp16 overflow, or NaN latents).
        """
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"decode expects latents (B, {self.latent_channels}, T, h, w), got {tuple(latents.shape)}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"decode chunk_size must be at least 1 latent frame, got {chunk_size}")
        if not bool(torch.isfinite(latents).all()):
            raise NonFiniteOutputError("the latents to decode hold NaN or inf values: whatever made them (a sampler "
                                       "in fp16, or another node) went wrong before the VAE, so nothing was decoded")
        if tile_size == AUTO:
            from .budget import decode_fitting

            return decode_fitting(self, latents, chunk_size, progress=progress)
        latents = latents.to(self.dtype)
        plan = self._tile_plan(tile_size, latents.shape[-2:], 1)
        tick = _ticker(progress, self._pieces(plan, latents.shape, 1, chunk_size))
        decode_tile = lambda tile: self._run_pieces(self._decode_pass, tile, chunk_size, tick)  # noqa: E731
        if plan is not None:
            pixels = run_tiled(decode_tile, latents, plan, in_scale=1, out_scale=self.spatial_factor)
        else:
            pixels = decode_tile(latents)
        check_finite(pixels, "the VAE", self.dtype, "decode")   # NaN pixels would be written as black
        return pixels

    def _decode_pass(self, latents: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latents, cache), cache)

    @staticmethod
    def _run_pieces(network, x: torch.Tensor, chunk_size: int | None, tick) -> torch.Tensor:
        """``network`` over x whole, or in temporal chunks; ``tick`` after every piece."""
        if chunk_size is not None:
            return run_chunked(network, x, chunk_size, after_chunk=tick)
        out = network(x, None)
        if tick is not None:
            tick()
        return out

    # ------------------------------------------------------------------ training

    def forward(
        self, video: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[DiagonalGaussian, torch.Tensor]:
        """Reconstruction for training: (posterior, decoded pixels of the same shape as ``video``)."""
        posterior = self.encode(video)
        latents = posterior.sample(generator) if sample_posterior else posterior.mode()
        return posterior, self.decode(latents)

    # ------------------------------------------------------------------ checks

    def _tile_plan(self, tile_size: int | None, size: Sequence[int], unit: int) -> TilePlan | None:
        """The tiling of an input of (H, W) ``size``, ``unit`` input pixels per latent pixel; None: no tiles."""
        if tile_size is None:
            return None
        plan = TilePlan.from_pixels(tile_size, self.spatial_factor)  # validates before any work
        return plan if max(size) * self.spatial_factor // unit > tile_size else None

    def _pieces(self, plan: TilePlan | None, shape: Sequence[int], unit: int, chunk_size: int | None) -> int:
        """Tiles x temporal chunks that encode/decode of an input of ``shape`` will run."""
        tiles = 1
        if plan is not None:
            height, width = (s // unit for s in shape[-2:])                          # latent pixels
            tiles = len(plan.starts(height)) * len(plan.starts(width))
        return tiles * (len(temporal_chunks(shape[2], chunk_size)) if chunk_size is not None else 1)

    def _check_pixel_size(self, frames: int, height: int, width: int) -> None:
        s, t = self.spatial_factor, self.temporal_factor
        if (frames - 1) % t or height % s or width % s or min(frames, height, width) < 1:
            raise ValueError(
                f"pixel video of {frames} frames at {height}x{width}: frames must be 1 + {t}k "
                f"and height/width multiples of {s}"
            )


def _check_supported(
    down_types, up_types, encoder_act, decoder_act, encoder_type, decoder_type, double_z, post_quant, interpolate
) -> None:
    """Reject config values that the released architecture (and this module) does not have."""
    problems = []
    if any(t != _BLOCK_TYPES["encoder"] for t in down_types):
        problems.append(f"encoder_down_block_types must all be {_BLOCK_TYPES['encoder']!r}")
    if any(t != _BLOCK_TYPES["decoder"] for t in up_types):
        problems.append(f"decoder_up_block_types must all be {_BLOCK_TYPES['decoder']!r}")
    if encoder_act != "silu" or decoder_act != "silu":
        problems.append("encoder_act_fn/decoder_act_fn must be 'silu'")
    if encoder_type != "causal_vae_conv" or decoder_type != "causal_vae_conv":
        problems.append("encoder_type/decoder_type must be 'causal_vae_conv'")
    if not double_z or not post_quant:
        problems.append("encoder_double_z and add_post_quant_conv must be true")
    if interpolate:
        problems.append("interpolate must be false (the released VAE upsamples by depth-to-space)")
    if problems:
        raise ValueError("unsupported CausalVideoVAE config: " + "; ".join(problems))
