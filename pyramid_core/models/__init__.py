"""Pyramid Flow models: the two pyramid DiTs, the causal video VAE and the text encoders."""

from .vae import CausalVideoVAE
