"""Test helpers: a DiT wrapper that records every call, and injected-noise sources."""

from __future__ import annotations

import torch


class RecordingDiT(torch.nn.Module):
    """Wraps a DiT; ``calls`` holds ``(clips, timestep, output)`` of every forward."""

    def __init__(self, dit: torch.nn.Module):
        super().__init__()
        self.dit = dit
        self.calls: list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = []

    def forward(self, sample, **kwargs):
        out = self.dit(sample=sample, **kwargs)
        self.calls.append(([c.clone() for c in sample[0]], kwargs["timestep_ratio"].clone(), out[0].clone()))
        return out


class ReplayNoise:
    """A block-noise source handing out given tensors in order (checks shapes)."""

    def __init__(self, tensors):
        self.tensors = list(tensors)
        self.used = 0

    def __call__(self, shape):
        tensor = self.tensors[self.used]
        assert tuple(tensor.shape) == tuple(shape), (tuple(tensor.shape), tuple(shape))
        self.used += 1
        return tensor


class RecordNoise:
    """Wraps a block-noise source and keeps what it returned."""

    def __init__(self, source):
        self.source = source
        self.drawn: list[torch.Tensor] = []

    def __call__(self, shape):
        tensor = self.source(shape)
        self.drawn.append(tensor.clone())
        return tensor


class FakeDiT(torch.nn.Module):
    """A cheap stand-in DiT with the pyramid DiT calling convention.

    Predicts ``0.5 * noisy clip + 0.01 * timestep + mean of the history`` so outputs depend on
    everything the sampler passes; records ``(batch, image tokens, clip shapes)`` per call.
    """

    def __init__(self, fail: bool = False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.fail = fail
        self.calls: list[tuple[int, int, list[tuple[int, ...]]]] = []

    def forward(self, sample, encoder_hidden_states, encoder_attention_mask=None, pooled_projections=None,
                timestep_ratio=None):
        if self.fail:
            raise AssertionError("the DiT must not run for bad input")
        clips = sample[0]
        noisy = clips[-1]
        assert encoder_hidden_states.shape[0] == noisy.shape[0] == timestep_ratio.shape[0]
        tokens = sum(c.shape[2] * (c.shape[3] // 2) * (c.shape[4] // 2) for c in clips)
        self.calls.append((noisy.shape[0], tokens, [tuple(c.shape) for c in clips]))
        history = sum(c.float().mean() for c in clips[:-1]) if len(clips) > 1 else 0.0
        text = encoder_hidden_states.float().mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        out = 0.5 * noisy + 0.01 * timestep_ratio.view(-1, 1, 1, 1, 1) / 1000 + 0.1 * history + text
        return [out * self.weight]


def random_text(batch: int = 1, length: int = 8, width: int = 32, pooled: int = 16, seed: int = 0):
    """Positive and negative stand-in embeddings (the tiny golden DiTs' widths by default)."""
    from pyramid_core.models.text_encoders import PromptEmbeddings
    from pyramid_core.sampling import TextConditioning

    g = torch.Generator().manual_seed(seed)

    def one():
        mask = torch.zeros(batch, length, dtype=torch.int64)
        mask[:, : length // 2] = 1
        return PromptEmbeddings(torch.randn(batch, length, width, generator=g), mask, torch.randn(batch, pooled, generator=g))

    return TextConditioning(one(), one())
