"""Sequence parallelism for one DiT call (DeepSpeed-Ulysses), as the reference's multi-GPU inference.

Each of the N ranks of a sequence group holds ``1/N`` of the call's image tokens through
every per-token layer (norms, projections, MLPs), so activation memory per rank falls with N.
Around attention, an all-to-all trades the split: each rank then holds *every* token for
``H / N`` of the heads, runs the ordinary packed attention (same masks, same backends) on
those heads, and a second all-to-all trades back. The text stream (at most a few hundred
tokens) stays whole on every rank; its queries, keys and values are cut to the rank's heads
for attention and its attention output is all-gathered. The last projection's image tokens
are all-gathered, so every rank returns the whole prediction.

The image tokens are padded to a multiple of N with zero rows; the padding never enters
attention and is cut off at the end. Heads must divide by N (:func:`check_heads`).
Parameters stay replicated: this splits activations, not the model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..models.dit_layers import identity_rotations
from ..models.dit_tokens import TokenLayout


def check_heads(heads: int, ranks: int) -> None:
    """``ValueError`` unless ``ranks`` divides ``heads``, naming the sizes that would."""
    if heads % ranks:
        fits = [n for n in range(2, heads + 1) if heads % n == 0 and n <= 16]
        raise ValueError(f"sequence parallelism splits the DiT's {heads} attention heads over the ranks, and "
                         f"{ranks} ranks do not divide {heads}; use {' or '.join(map(str, fits))} ranks per video")


def enable_sequence_parallel(dit, group) -> None:
    """Make every later call of ``dit`` (a pyramid DiT) run sequence parallel over ``group``.

    Collective-free; every rank of ``group`` must then call ``dit`` with the same inputs.
    """
    check_heads(dit.config.num_attention_heads, dist.get_world_size(group))
    dit.set_layout_hook(lambda layout: SequenceShardedLayout(layout, group))


def _seq_to_heads(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """``(B, L_local, H, K)`` -> ``(B, size * L_local, H / size, K)``: every token, this rank's heads."""
    b, length, heads, k = x.shape
    send = x.reshape(b, length, size, heads // size, k).permute(2, 0, 1, 3, 4).contiguous()  # (N, B, L_loc, H/N, K)
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)                    # dim 0: the rank the tokens came from
    return received.permute(1, 0, 2, 3, 4).reshape(b, size * length, heads // size, k)


def _heads_to_seq(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """Inverse of :func:`_seq_to_heads`: ``(B, size * L_local, H / size, K)`` -> ``(B, L_local, H, K)``."""
    b, total, heads, k = x.shape
    send = x.reshape(b, size, total // size, heads, k).permute(1, 0, 2, 3, 4).contiguous()  # (N, B, L_loc, H/N, K)
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)                    # dim 0: the rank's head group
    return received.permute(1, 2, 0, 3, 4).reshape(b, total // size, size * heads, k)


def _all_gather(tensor: torch.Tensor, group, size: int, dim: int) -> torch.Tensor:
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor, group=group)
    return torch.cat(parts, dim=dim)


class SequenceShardedLayout(TokenLayout):
    """This rank's share of a call's :class:`TokenLayout`: the image stream holds
    ``image_len = ceil(L_img / N)`` tokens (this rank's slice), the text stream all of its rows.

    The model splits the image stream with :meth:`scatter_image`; the blocks then see an
    ordinary layout (modulation, gating, RoPE, ``join``/``split`` act on the local tokens) and
    :meth:`attend` does the exchange. :meth:`unpack_output` gathers the prediction.
    Inference calls only: one pyramid entry per call.
    """

    def __init__(self, full: TokenLayout, group):  # noqa: D107 -- no TokenLayout.__init__: geometry comes from full
        if full.num_entries != 1:
            raise ValueError(f"sequence parallelism splits inference calls (one pyramid entry), got "
                             f"{full.num_entries} entries")
        self.full, self.group = full, group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.device, self.batch, self.num_entries = full.device, full.batch, full.num_entries
        self.text_len, self.text_rows, self.grids = full.text_len, full.text_rows, full.grids
        self.image_len = -(-full.image_len // self.size)                  # local tokens, padding included
        self.lengths = [self.image_len]
        self.padding = self.image_len * self.size - full.image_len
        if full.rope is not None:                                        # padding rows: identity rotations
            rope = torch.cat([full.rope, identity_rotations(self.padding, full.rope)])
            self.rope = self._local(rope)
        else:
            self.rope = None

    def _local(self, tokens: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return tokens.narrow(dim, self.rank * self.image_len, self.image_len)

    def scatter_image(self, x: torch.Tensor) -> torch.Tensor:
        """The whole image stream ``(B, L_img, D)`` -> this rank's ``(B, image_len, D)``."""
        return self._local(F.pad(x, (0, 0, 0, self.padding)), dim=1)

    def _to_full(self, flat: torch.Tensor, first_head: int, heads: int) -> torch.Tensor:
        """Local flat ``(T_local, H, K)`` -> the full layout's flat ``(T, H / N, K)`` of this rank's heads."""
        c, x = self.split(flat)                                           # (B*S, L_txt, H, K), (B, L_loc, H, K)
        x = _seq_to_heads(x, self.group, self.size)[:, : self.full.image_len]  # (B, L_img, H/N, K)
        return self.full.join(c[:, :, first_head : first_head + heads], x)

    @torch.compiler.disable
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Same contract as :meth:`TokenLayout.attend` on the local flat ``(T_local, H, K)``."""
        heads = q.shape[1] // self.size
        first = self.rank * heads
        out = self.full.attend(*(self._to_full(t, first, heads) for t in (q, k, v)))  # (T, H/N, K)
        c, x = self.full.split(out)                                       # (B*S, L_txt, H/N, K), (B, L_img, H/N, K)
        x = _heads_to_seq(F.pad(x, (0, 0, 0, 0, 0, self.padding)), self.group, self.size)  # (B, L_loc, H, K)
        c = _all_gather(c, self.group, self.size, dim=2)                 # (B*S, L_txt, H, K)
        return self.join(c, x)

    @torch.compiler.disable
    def unpack_output(self, x: torch.Tensor, patch: int) -> list[torch.Tensor]:
        """Local final tokens ``(B, image_len, p*p*C)`` -> every rank: the whole prediction."""
        whole = _all_gather(x, self.group, self.size, dim=1)[:, : self.full.image_len]  # (B, L_img, p*p*C)
        return self.full.unpack_output(whole, patch)
