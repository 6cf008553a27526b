"""The causal video VAE of Pyramid Flow, one concept per module:

causal_conv3d (causal conv + chunk cache), frame_norm, attention, resnet, resample
(2x up/down in space and time), blocks, encoder, decoder, posterior, chunking, tiling,
model (the ``CausalVideoVAE`` that loads the released checkpoint).
"""

from .causal_conv3d import CausalCache, CausalConv3d
from .model import CausalVideoVAE
from .posterior import DiagonalGaussian
from .tiling import TilePlan

__all__ = ["CausalCache", "CausalConv3d", "CausalVideoVAE", "DiagonalGaussian", "TilePlan"]
