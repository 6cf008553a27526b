"""ComfyUI entry point of the Pyramid Flow node pack: registers the nodes, nothing else."""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
