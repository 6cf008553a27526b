"""The "flex" backend (flex_attention with a block mask of sequences and frames) against SDPA.

On the CPU flex_attention runs its eager reference path: the same mask and semantics as the
compiled GPU kernels, so the block mask and the packing are what is tested here.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from pyramid_core.attention import flex, varlen_attention
from pyramid_core.attention.sdpa import varlen_attention_sdpa

warnings.filterwarnings("ignore", message=".*flex_attention.*")


def _batch(lengths, heads=2, kv_heads=2, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q = torch.randn(total, heads, dim, generator=g)
    k, v = (torch.randn(total, kv_heads, dim, generator=g) for _ in range(2))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


@pytest.mark.parametrize("case", ["frames", "no-mask", "gqa", "unsorted", "empty-sequence"])
def test_flex_equals_sdpa(case):
    lengths = [40, 0, 60] if case == "empty-sequence" else [40, 60]
    q, k, v, cu = _batch(lengths, kv_heads=1 if case == "gqa" else 2)
    frames = None
    if case != "no-mask":
        frames = torch.cat([torch.repeat_interleave(torch.arange(4), torch.tensor([4, 12, 12, 12])),
                            torch.repeat_interleave(torch.arange(4), torch.tensor([6, 18, 18, 18]))]).int()
        if case == "unsorted":
            frames = torch.randint(0, 4, frames.shape, generator=torch.Generator().manual_seed(1)).int()
    out = varlen_attention(q, k, v, cu, frame_ids=frames, backend="flex")
    torch.testing.assert_close(out, varlen_attention_sdpa(q, k, v, cu, frames), rtol=1e-4, atol=1e-5)


def test_off_cuda_flex_refuses_calls_that_need_gradients():
    # flex_attention has no CPU backward: a training call there is refused by name, and
    # never offered by auto (which times candidates on CUDA only).
    q, k, v, cu = _batch([10, 6])
    with pytest.raises(ValueError, match="no backward off CUDA"):
        varlen_attention(q.requires_grad_(), k, v, cu, backend="flex")


def test_the_block_mask_is_built_once_per_index_tensors(monkeypatch):
    q, k, v, cu = _batch([30, 20])
    frames = torch.cat([torch.zeros(10), torch.ones(20), torch.zeros(5), torch.ones(15)]).int()
    built = []
    from torch.nn.attention import flex_attention as module

    real = module.create_block_mask

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "create_block_mask", counting)
    for _ in range(3):                              # every layer of a step passes the same tensors
        varlen_attention(q, k, v, cu, frame_ids=frames, backend="flex")
    assert len(built) == 1
    varlen_attention(q, k, v, cu, frame_ids=frames.clone(), backend="flex")   # a new layout: a new mask
    assert len(built) == 2


def test_flex_is_offered_where_it_runs():
    assert flex.flex_unavailable_reason() is None                      # torch 2.13 has it
    assert flex.flex_unavailable_reason(torch.empty(3, 2, 40)) is None  # any width on the CPU
