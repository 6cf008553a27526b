"""ComfyUI entry point of the Pyramid Flow node pack: registers the nodes and its web folder, nothing else."""

from .nodes import comfy_entrypoint

# Front-end code of the pack: shows the text some nodes report after they run.
WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
