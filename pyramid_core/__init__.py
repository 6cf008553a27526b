"""pyramid_core: Pyramid Flow (pyramidal flow matching for video) without ComfyUI.

Models, the pyramid scheduler and samplers, attention kernels, checkpoint loading and the
training code. Nothing in this package imports ComfyUI; the node pack in ``nodes/`` is a
thin adapter on top of it.
"""

__version__ = "0.1.0"
