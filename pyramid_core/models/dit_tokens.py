"""How a pyramid DiT call turns latents into token streams and attention sequences.

A call receives ``sample``: a list of S *entries* (pyramid stages, or batch columns in
training), each a list of clips ``(B, C, T, H, W)`` -- the temporal history first (older
clips at lower resolution), the noisy clip being denoised last. Text rows are interleaved
over entries as in the reference: row ``b * S + s`` belongs to batch row ``b`` of entry s.

Inside the model two token streams run side by side:

* image stream ``x: (B, L_img, D)`` -- the tokens of all entries concatenated along L
  (entry s owns ``lengths[s]`` consecutive tokens);
* text stream ``c: (B * S, L_txt, D)`` -- the (padded) T5 tokens of every row.

Attention sees one sequence per (row, entry): the row's *valid* text tokens followed by its
image tokens. :class:`TokenLayout` holds, once per call, the index that packs both streams
into those sequences for :func:`pyramid_core.attention.varlen_attention`, the per-token
frame ids of the frame-causal mask (text carries frame 0), and the clip geometry needed to
build positions and to unpack the output. Dropping padded text tokens is exact: in the
reference they are masked out as keys, and nothing reads their own outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention import varlen_attention
from ..attention.plan import TensorMemo

from .dit_layers import ADA_NORM_EPS, identity_rotations, rope_rotations
from .fused import layer_norm_modulate


@dataclass(frozen=True)
class ClipGrid:
    """Token grid of one clip: ``frames`` latent frames of ``height x width`` patches,
    starting at temporal index ``start``."""

    start: int
    frames: int
    height: int
    width: int

    @property
    def num_tokens(self) -> int:
        return self.frames * self.height * self.width


def normalize_sample(sample) -> list[list[torch.Tensor]]:
    """Check ``sample`` and return it as a list of entries, each a list of 5-D clips."""
    if isinstance(sample, torch.Tensor):
        raise TypeError(
            "sample must be a list of pyramid entries, each a list of clips (B, C, T, H, W) "
            "with the noisy clip last; for one latent without history pass [[latent]]"
        )
    entries = []
    for s, entry in enumerate(sample):
        clips = [entry] if isinstance(entry, torch.Tensor) else list(entry)
        if not clips:
            raise ValueError(f"sample[{s}] has no clips")
        batch = clips[-1].shape[0]
        for j, clip in enumerate(clips):
            if clip.ndim != 5:
                raise ValueError(f"sample[{s}][{j}] must be (B, C, T, H, W), got shape {tuple(clip.shape)}")
            if clip.shape[0] != batch:
                raise ValueError(f"sample[{s}][{j}] has batch {clip.shape[0]}, the noisy clip has {batch}")
        entries.append(clips)
    if not entries:
        raise ValueError("sample is empty")
    batches = {clips[-1].shape[0] for clips in entries}
    if len(batches) != 1:
        raise ValueError(f"every pyramid entry must have the same batch size, got {sorted(batches)}")
    return entries


_kept_columns = TensorMemo()


def _columns_in_use(mask: torch.Tensor):
    """``(index of the columns some row uses, the mask of those columns)``, or None when every
    column is in use; reads the mask on the host (one sync)."""
    keep = mask.bool().any(0)                                             # (L_txt,)
    if bool(keep.all()):
        return None
    index = keep.nonzero().flatten()                                      # (L_kept,)
    return index, mask.index_select(1, index)


def drop_padding_columns(text: torch.Tensor, mask: torch.Tensor | None):
    """Text ``(N, L_txt, W)`` and its mask ``(N, L_txt)`` without the columns that are padding
    in every row (T5 pads each prompt to 128 tokens; a prompt uses 20-40).

    Exact: a padded token is never attended as a key, and nothing reads its own outputs, so
    dropping it from the text stream's norms, projections and MLPs changes no output. Columns
    some row uses stay (that row's padding is then masked as before). A mask that does not
    fit the text is returned as it is, for the layout to report.

    Which columns to keep is read once per mask tensor object (the samplers pass one mask to
    every step of a stage): later calls neither synchronise nor build a new mask, so the
    returned mask is the same object and the layout cache recognises it without reading it.
    """
    if mask is None or tuple(mask.shape) != tuple(text.shape[:2]):
        return text, mask
    kept = _kept_columns.get((mask,), None, lambda: _columns_in_use(mask))
    if kept is None:
        return text, mask
    index, kept_mask = kept
    return text.index_select(1, index.to(text.device)), kept_mask


def clip_grids(clips: list[torch.Tensor], patch: int) -> list[ClipGrid]:
    """Token grids of one entry's clips (time indices run on from clip to clip)."""
    grids, start = [], 0
    for clip in clips:
        _, _, frames, height, width = clip.shape
        if height % patch or width % patch:
            raise ValueError(f"latent size {height}x{width} is not divisible by the patch size {patch}")
        grids.append(ClipGrid(start, frames, height // patch, width // patch))
        start += frames
    return grids


def _axis_positions(size: int, full: int, device) -> torch.Tensor:
    """Positions of ``size`` cells spread over a ``full``-cell axis (linear interpolation of
    0..full-1, as the released models were trained); ``0..full-1`` when sizes agree."""
    grid = torch.arange(full, dtype=torch.float32, device=device)
    if size == full:
        return grid
    return F.interpolate(grid[None, None], size=size, mode="linear")[0, 0]  # (size,)


def patchify(clip: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, T, H, W)`` -> ``(B, T * H/p * W/p, p * p * C)``, tokens in (t, h, w) order."""
    b, c, t, h, w = clip.shape
    x = clip.reshape(b, c, t, h // patch, patch, w // patch, patch)  # (B, C, T, h, p, w, p)
    x = x.permute(0, 2, 3, 5, 4, 6, 1)  # (B, T, h, w, p, p, C)
    return x.reshape(b, t * (h // patch) * (w // patch), patch * patch * c)  # (B, L, p*p*C)


def unpatchify(tokens: torch.Tensor, grid: ClipGrid, patch: int) -> torch.Tensor:
    """``(B, T*h*w, p*p*C)`` -> ``(B, C, T, h*p, w*p)``; inverse of :func:`patchify`."""
    b = tokens.shape[0]
    x = tokens.reshape(b, grid.frames, grid.height, grid.width, patch, patch, -1)  # (B, T, h, w, p, p, C)
    x = x.permute(0, 6, 1, 2, 4, 3, 5)  # (B, C, T, h, p, w, p)
    return x.reshape(b, x.shape[1], grid.frames, grid.height * patch, grid.width * patch)  # (B, C, T, H, W)


class TokenLayout:
    """Geometry and attention packing of one DiT call (built without grad, used by every block).

    Args:
        entries: normalised ``sample`` (see :func:`normalize_sample`).
        patch: spatial patch size in latent pixels.
        text_mask: ``(B * S, L_txt)`` 1/0 or bool T5 mask, or None (all tokens valid).
        text_len: L_txt.
        frame_causal: apply the frame-causal mask (a token sees frames <= its own).
    """

    _joined_rope = None             # joined_rope()'s table, built on first use

    def __init__(self, entries, patch: int, text_mask: torch.Tensor | None, text_len: int, frame_causal: bool):
        device = entries[0][-1].device
        self.device = device
        self.batch = entries[0][-1].shape[0]
        self.num_entries = len(entries)
        self.text_len = text_len
        self.text_rows = self.batch * self.num_entries
        self.grids = [clip_grids(clips, patch) for clips in entries]
        self.lengths = [sum(g.num_tokens for g in grids) for grids in self.grids]
        self.image_len = sum(self.lengths)
        self.rope = None  # (L_img, K/2, 2) cos/sin rotations of the image tokens
        self._joined_rope = None
        self.positions = self._image_positions()  # (L_img, 3)

        if text_mask is None:
            text_mask = torch.ones(self.text_rows, text_len, dtype=torch.bool, device=device)
        if tuple(text_mask.shape) != (self.text_rows, text_len):
            raise ValueError(
                f"encoder_attention_mask must be (B * S, L_txt) = ({self.text_rows}, {text_len}), "
                f"got {tuple(text_mask.shape)}"
            )
        self._build_packing(text_mask.bool().to(device), frame_causal)

    def check_rows(self, text: torch.Tensor, pooled: torch.Tensor | None, timestep: torch.Tensor | None) -> None:
        """Clear errors for conditioning that does not match the sample's ``B * S`` rows."""
        if pooled is None or timestep is None:
            raise ValueError("pooled_projections and timestep_ratio are required")
        for name, tensor in (("encoder_hidden_states", text), ("pooled_projections", pooled), ("timestep_ratio", timestep)):
            if tensor.shape[0] != self.text_rows:
                raise ValueError(
                    f"{name} has {tensor.shape[0]} rows; the sample has batch {self.batch} x "
                    f"{self.num_entries} entries = {self.text_rows} (row b * S + s is row b of entry s)"
                )

    # -- positions --------------------------------------------------------------------------

    def _image_positions(self) -> torch.Tensor:
        """``(L_img, 3)`` float positions (t, y, x) of every image token.

        Within an entry, t counts frames from its first clip; y and x of a lower-resolution
        history clip are spread over the noisy clip's grid.
        """
        out = []
        for grids in self.grids:
            last = grids[-1]
            for g in grids:
                t = torch.arange(g.start, g.start + g.frames, dtype=torch.float32, device=self.device)
                y = _axis_positions(g.height, last.height, self.device)
                x = _axis_positions(g.width, last.width, self.device)
                pos = torch.stack(torch.meshgrid(t, y, x, indexing="ij"), dim=-1)  # (T, h, w, 3)
                out.append(pos.reshape(-1, 3))
        return torch.cat(out)  # (L_img, 3)

    def set_rope(self, angles: torch.Tensor | None) -> None:
        """Rotary angles ``(L_img, K / 2)`` for the image tokens. Text tokens sit at position 0
        on every axis, where the rotation is the identity, so they are left untouched."""
        self.rope = None if angles is None else rope_rotations(angles)
        self._joined_rope = None

    def joined_rope(self) -> torch.Tensor | None:
        """Rotations ``(T, K / 2, 2)`` of the flat :meth:`join` order: identity for the text
        tokens, the image tokens' own for every batch row (built once per layout)."""
        if self.rope is None:
            return None
        if self._joined_rope is None:
            text = identity_rotations(self.text_rows * self.text_len, self.rope)
            self._joined_rope = torch.cat([text, self.rope.repeat(self.batch, 1, 1)])  # (T, K/2, 2)
        return self._joined_rope

    # -- the two streams --------------------------------------------------------------------

    def scatter_image(self, x: torch.Tensor) -> torch.Tensor:
        """The image stream ``(B, L_img, ...)`` as the blocks of this process hold it: all of it
        here; a share of it under sequence parallelism (:mod:`pyramid_core.parallel.sequence`)."""
        return x

    def _image_rows(self, p: torch.Tensor) -> torch.Tensor:
        return p.view(self.batch, self.num_entries, -1)  # (B*S, D) -> (B, S, D)

    def _per_entry(self, fn, tokens: tuple[torch.Tensor, ...], params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``fn(*tokens, *params)`` with each entry's tokens ``(B, L_s, D)`` and its row vectors
        ``(B, 1, D)``; ``params`` are per-row ``(B * S, D)``."""
        params = tuple(self._image_rows(p) for p in params)  # (B, S, D)
        if self.num_entries == 1:
            return fn(*tokens, *params)  # (B, L_img, D)
        segments = zip(*(t.split(self.lengths, dim=1) for t in tokens))
        parts = [fn(*segs, *(p[:, s : s + 1] for p in params)) for s, segs in enumerate(segments)]
        return torch.cat(parts, dim=1)  # (B, L_img, D)

    def norm_modulate_image(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``layer_norm(x) * (1 + scale) + shift`` with each (row, entry)'s vectors (one fused
        kernel on a GPU, :func:`~.fused.layer_norm_modulate`).

        Args:
            x: image stream ``(B, L_img, D)``.
            shift, scale: per text row ``(B * S, D)``.
        """
        return self._per_entry(lambda t, sh, sc: layer_norm_modulate(t, sh, sc, ADA_NORM_EPS), (x,), (shift, scale))

    def gate_image(self, x: torch.Tensor, update: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``x + gate * update``; x, update ``(B, L_img, D)``, gate ``(B * S, D)``."""
        return self._per_entry(lambda t, u, g: torch.addcmul(t, u, g), (x, update), (gate,))

    @staticmethod
    def norm_modulate_text(c: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``layer_norm(c) * (1 + scale) + shift``; c ``(B * S, L_txt, D)``, shift/scale ``(B * S, D)``."""
        return layer_norm_modulate(c, shift[:, None], scale[:, None], ADA_NORM_EPS)

    @staticmethod
    def gate_text(c: torch.Tensor, update: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``c + gate * update``; c, update ``(B * S, L_txt, D)``, gate ``(B * S, D)``."""
        return torch.addcmul(c, update, gate[:, None])

    def join(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Text ``(B * S, L_txt, ...)`` and image ``(B, L_img, ...)`` -> flat ``(T, ...)``."""
        return torch.cat([c.flatten(0, 1), x.flatten(0, 1)])  # (T, ...)

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`join`."""
        c, x = flat.split([self.text_rows * self.text_len, self.batch * self.image_len])
        return c.unflatten(0, (self.text_rows, self.text_len)), x.unflatten(0, (self.batch, self.image_len))

    # -- attention --------------------------------------------------------------------------

    def _build_packing(self, text_mask: torch.Tensor, frame_causal: bool) -> None:
        text_tokens = self.text_rows * self.text_len
        offsets = [0]
        for length in self.lengths:
            offsets.append(offsets[-1] + length)
        frames = self.positions[:, 0].to(torch.int32)  # (L_img,)
        index, frame_ids, seqlens = [], [], []
        for b in range(self.batch):
            for s in range(self.num_entries):
                row = b * self.num_entries + s
                text = row * self.text_len + torch.nonzero(text_mask[row]).flatten()
                image = text_tokens + b * self.image_len + torch.arange(offsets[s], offsets[s + 1], device=self.device)
                index += [text, image]
                frame_ids += [torch.zeros(len(text), dtype=torch.int32, device=self.device), frames[offsets[s] : offsets[s + 1]]]
                seqlens.append(len(text) + len(image))
        self.flat_len = text_tokens + self.batch * self.image_len
        self.pack_index = torch.cat(index)  # (T_packed,)
        self.cu_seqlens = F.pad(torch.tensor(seqlens, device=self.device).cumsum(0), (1, 0)).to(torch.int32)
        frame_ids = torch.cat(frame_ids)
        # Without history every token is frame 0 and the mask is all-true: drop it.
        self.frame_ids = frame_ids if frame_causal and bool((frame_ids > 0).any()) else None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of every (row, entry) sequence over its valid text + image tokens.

        Args:
            q, k, v: flat ``(T, H, K)`` in :meth:`join` order.

        Returns:
            ``(T, H, K)``; rows of padded text tokens are zero.
        """
        idx = self.pack_index
        # Under bf16 autocast the per-head RMSNorm keeps its fp32 weight's dtype (as the
        # reference does), so q and k can arrive wider than v; attention runs in v's dtype.
        q, k = q.to(v.dtype), k.to(v.dtype)
        packed = varlen_attention(
            q.index_select(0, idx), k.index_select(0, idx), v.index_select(0, idx),  # (T_packed, H, K)
            self.cu_seqlens,
            frame_ids=self.frame_ids,
        )  # (T_packed, H, K)
        return packed.new_zeros(self.flat_len, *packed.shape[1:]).index_copy(0, idx, packed)  # (T, H, K)

    # -- output -----------------------------------------------------------------------------

    def unpack_output(self, x: torch.Tensor, patch: int) -> list[torch.Tensor]:
        """Final image tokens ``(B, L_img, p*p*C)`` -> per entry the noisy clip's prediction
        ``(B, C, T, H, W)`` (history tokens are dropped)."""
        outputs = []
        for grids, seg in zip(self.grids, x.split(self.lengths, dim=1)):
            last = grids[-1]
            outputs.append(unpatchify(seg[:, seg.shape[1] - last.num_tokens :], last, patch))
        return outputs


def joint_attention(proj, x: torch.Tensor, c: torch.Tensor, layout: TokenLayout):
    """MMDiT joint attention: image and text tokens use their own projections and attend together.

    Args:
        proj: :class:`~pyramid_core.models.dit_layers.AttentionProjections` with ``context=True``.
        x: image stream ``(B, L_img, D)`` (already normalised and modulated).
        c: text stream ``(B * S, L_txt, D)`` (already normalised and modulated).
        layout: the call's :class:`TokenLayout`.

    Returns:
        ``(out_x, out_c)``: ``(B, L_img, D)`` through ``to_out.0`` and ``(B * S, L_txt, D)``
        through ``to_add_out`` (None when the block has no text output).
    """
    qx, kx, vx = proj.project(x, layout.rope)  # (B, L_img, H, K), q and k rotated
    qc, kc, vc = proj.project_context(c)  # (B*S, L_txt, H, K)
    out = layout.attend(layout.join(qc, qx), layout.join(kc, kx), layout.join(vc, vx))  # (T, H, K)
    out_c, out_x = layout.split(out.flatten(-2))  # (B*S, L_txt, D), (B, L_img, D)
    out_x = proj.to_out[0](out_x)  # (B, L_img, D)
    out_c = proj.to_add_out(out_c) if hasattr(proj, "to_add_out") else None  # (B*S, L_txt, D)
    return out_x, out_c
