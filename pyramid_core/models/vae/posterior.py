"""The encoder's output distribution: a diagonal Gaussian per latent element."""

from __future__ import annotations

import torch

from ...rng import standard_normal


class DiagonalGaussian:
    """Gaussian posterior from encoder moments (B, 2C, T, H, W): mean and log-variance halves.

    ``logvar`` is clamped to [-30, 20] as in the reference. ``sample`` draws its noise
    from the caller's generator (the reference drew from the global RNG in its pipelines)
    with :func:`pyramid_core.rng.standard_normal`, so a seeded generator gives the same
    noise on every run and machine. Without a generator (training) it is a plain
    ``torch.randn`` from the global RNG on the latents' device, which is faster.
    """

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)                 # (B, C, T, H, W) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * eps, ``eps`` from ``generator`` (portable) or the global RNG (fast)."""
        if generator is None:
            eps = torch.randn(self.mean.shape, device=self.mean.device, dtype=self.mean.dtype)
        else:
            eps = standard_normal(self.mean.shape, generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL divergence to ``other`` (default: the standard normal), summed over T, H, W -> (B, C).

        Always fp32: under bf16 autocast the moments are bf16, and ``exp(logvar) - 1 - logvar``
        cancels to rounding noise near the prior (logvar ~ 0), where a trained VAE sits.
        """
        mean, logvar = self.mean.float(), self.logvar.float()
        if other is None:
            terms = mean.pow(2) + logvar.exp() - 1.0 - logvar
        else:
            other_mean, other_logvar = other.mean.float(), other.logvar.float()
            terms = ((mean - other_mean).pow(2) + logvar.exp()) / other_logvar.exp() - 1.0 - logvar + other_logvar
        return 0.5 * terms.sum(dim=(2, 3, 4))
