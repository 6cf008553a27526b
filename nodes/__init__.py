"""Pyramid Flow nodes for ComfyUI (V3 API).

Each node turns its inputs into one call of ``pyramid_core`` and back; no model math lives
here. The pack registers through ``comfy_entrypoint`` only (a pack that also defines
``NODE_CLASS_MAPPINGS`` has its entry point ignored by ComfyUI).
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from ._runtime import register_prompt_hook
from .conditioning import PyramidFlowGuidanceSchedule, PyramidFlowPromptSchedule, PyramidFlowTextEncode
from .history import PyramidFlowHistory
from .latents import PyramidFlowEmptyLatent
from .loaders import PyramidFlowDiTLoader, PyramidFlowLoraLoader, PyramidFlowTextEncoderLoader, PyramidFlowVAELoader
from .sampling import PyramidFlowSampler, PyramidFlowStageSampler, PyramidFlowStageTransition, PyramidFlowUnitSampler
from .vae import PyramidFlowVAEDecode, PyramidFlowVAEEncode

NODES: list[type[io.ComfyNode]] = [
    PyramidFlowDiTLoader,
    PyramidFlowVAELoader,
    PyramidFlowTextEncoderLoader,
    PyramidFlowLoraLoader,
    PyramidFlowTextEncode,
    PyramidFlowPromptSchedule,
    PyramidFlowGuidanceSchedule,
    PyramidFlowEmptyLatent,
    PyramidFlowSampler,
    PyramidFlowStageSampler,
    PyramidFlowStageTransition,
    PyramidFlowUnitSampler,
    PyramidFlowHistory,
    PyramidFlowVAEEncode,
    PyramidFlowVAEDecode,
]


class PyramidFlowExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> PyramidFlowExtension:
    register_prompt_hook()          # the loaders' queue-time checks read the queued prompt
    return PyramidFlowExtension()
