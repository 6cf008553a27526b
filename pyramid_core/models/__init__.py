"""Pyramid Flow models: the two pyramid DiTs, the causal video VAE and the text encoders."""

from .pyramid_flux import PyramidFluxTransformer
from .pyramid_mmdit import PyramidDiffusionMMDiT
from .vae import CausalVideoVAE
