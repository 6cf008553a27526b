"""What the nodes share: the pack's socket types, model handles managed by ComfyUI, model
file lists, and the per-step progress/preview/interrupt callback.

Nothing here does model math; it adapts ``pyramid_core`` objects to ComfyUI's memory
management (``comfy.model_management`` + ``ModelPatcher``) and progress reporting.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..pyramid_core.hub.catalog import where_to_get
from ..pyramid_core.loading import KIND_DESCRIPTIONS, kind_from_headers
from ..pyramid_core.models.block_swap import BlockSwap, transformer_blocks
from ..pyramid_core.preview import BUILTIN_FACTORS, PreviewFactors, latent_preview_rgb
from ..pyramid_core.sizes import check_latents_fit, check_sampler_fits
from ..pyramid_core.variants import VAE_SPATIAL_FACTOR, Variant

# Socket types of the pack. Each carries one of the handles below, so a wire can only join
# nodes that understand each other (a Pyramid DiT cannot reach a core KSampler).
DiTType = io.Custom("PYRAMID_DIT")
VAEType = io.Custom("PYRAMID_VAE")
TextEncoderType = io.Custom("PYRAMID_TEXT_ENCODER")
ConditioningType = io.Custom("PYRAMID_CONDITIONING")
HistoryType = io.Custom("PYRAMID_HISTORY")
GuidanceScheduleType = io.Custom("PYRAMID_GUIDANCE_SCHEDULE")

OFFLOAD_MODES = ("auto", "offload_after_use", "keep_on_gpu")
BUILTIN_PREVIEW = "built-in (Pyramid Flow VAE)"
OFFLOAD_TOOLTIP = ("Where the weights live between uses. auto: ComfyUI keeps them on the GPU and moves them to "
                   "the CPU when another model needs the memory. offload_after_use: back to the CPU as soon as "
                   "a node is done with them (least VRAM). keep_on_gpu: never offloaded (fastest, most VRAM).")


# --------------------------------------------------------------------------------------
# model handles: a pyramid_core module inside a ModelPatcher
# --------------------------------------------------------------------------------------

class PyramidModule(torch.nn.Module):
    """Holds a ``pyramid_core`` module for a ``ModelPatcher``.

    The patcher sets ``.device`` and bookkeeping attributes on the module it manages;
    diffusers modules have a read-only ``device``, so they sit one level down. Weight keys
    are ``diffusion_model.<name>`` (the prefix LoRA patches address).
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.diffusion_model = module


@dataclass(frozen=True)
class ModelHandle:
    """A loaded model as it travels between nodes: the patcher plus what the nodes need to know."""

    patcher: comfy.model_patcher.ModelPatcher
    offload: str = "auto"
    variant: Variant | None = None     # DiTs only
    preview: PreviewFactors | None = None   # DiTs only: latent preview colours (None: built in)
    family: str | None = None          # text encoders: "flux" or "mmdit"
    block_swap: int = 0                # DiTs only: blocks streamed from host memory (0: off)

    def clone(self) -> "ModelHandle":
        """A handle on a patcher clone (shares weights; patches added to it stay its own)."""
        return replace(self, patcher=self.patcher.clone())


def make_handle(module: torch.nn.Module, *, offload: str = "auto", kind: str = "dit", on_cpu: bool = False,
                **info) -> ModelHandle:
    """Wrap ``module`` in a ``ModelPatcher`` with ComfyUI's devices for its kind (``on_cpu``:
    loaded and run on the CPU)."""
    mm = comfy.model_management
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload={offload!r}: choose one of {', '.join(OFFLOAD_MODES)}")
    load_device = {"dit": mm.get_torch_device, "vae": mm.vae_device, "text": mm.text_encoder_device}[kind]()
    offload_device = {"dit": mm.unet_offload_device, "vae": mm.vae_offload_device,
                      "text": mm.text_encoder_offload_device}[kind]()
    if on_cpu:
        load_device = offload_device = torch.device("cpu")
    if offload == "keep_on_gpu":
        offload_device = load_device
    holder = PyramidModule(module.to(offload_device))
    patcher = comfy.model_patcher.ModelPatcher(holder, load_device=load_device, offload_device=offload_device)
    return ModelHandle(patcher, offload, **info)


def _unload(patcher) -> None:
    mm = comfy.model_management
    for index, loaded in enumerate(list(mm.current_loaded_models)):
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.pop(index)
            break
    mm.soft_empty_cache()


@contextmanager
def model_on_device(handle: ModelHandle, memory_required: int = 0):
    """Load the handle's weights (with its patches) on its device; yields the bare module.

    ``memory_required``: bytes the work needs beside the weights; ComfyUI unloads other
    models until that much is free (or nothing more can go)."""
    if handle.block_swap:
        with _swapped_on_device(handle, memory_required) as module:
            yield module
        return
    comfy.model_management.load_models_gpu([handle.patcher], memory_required=memory_required, force_full_load=True)
    try:
        yield handle.patcher.model.diffusion_model
    finally:
        if handle.offload == "offload_after_use":
            _unload(handle.patcher)


@contextmanager
def _swapped_on_device(handle: ModelHandle, memory_required: int):
    """The DiT with its last ``handle.block_swap`` blocks streamed from host memory.

    ComfyUI applies the handle's patches (LoRA) on the offload device, then BlockSwap puts
    everything but the swapped blocks on the load device; afterwards all goes back. The
    model is never whole on the GPU, so ComfyUI's loader (which moves whole models) is not
    used; other models are unloaded to make room for what stays plus two streamed blocks."""
    mm, patcher = comfy.model_management, handle.patcher
    module = patcher.model.diffusion_model
    blocks = transformer_blocks(module)
    streamed = [mm.module_size(b) for b in blocks[len(blocks) - handle.block_swap:]]
    on_device = mm.module_size(module) - sum(streamed) + 2 * max(streamed)
    mm.free_memory(on_device + memory_required, patcher.load_device)
    patcher.patch_model(device_to=patcher.offload_device)
    swap = BlockSwap(module, patcher.load_device, swapped=handle.block_swap)
    try:
        yield module
    finally:
        swap.remove()
        patcher.unpatch_model(device_to=patcher.offload_device)
        torch.nn.Module.to(module, patcher.offload_device)    # diffusers' .to() warns about our dtypes
        mm.soft_empty_cache()


def execution_device(handle: ModelHandle) -> torch.device:
    return handle.patcher.load_device


# --------------------------------------------------------------------------------------
# model files
# --------------------------------------------------------------------------------------

def _official_folders(folder_name: str, subfolder_prefix: str) -> list[str]:
    """``<repo>/<subfolder>`` entries (diffusers-style folders with a config.json) under a model folder."""
    found = set()
    for root in folder_paths.get_folder_paths(folder_name):
        root_path = Path(root)
        if not root_path.is_dir():
            continue
        for config in list(root_path.glob(f"{subfolder_prefix}*/config.json")) + \
                list(root_path.glob(f"*/{subfolder_prefix}*/config.json")):
            found.add(config.parent.relative_to(root_path).as_posix())
    return sorted(found)


def model_choices(folder_name: str, subfolder_prefix: str) -> list[str]:
    """Single files of a ComfyUI model folder, then the official checkpoint folders found in it."""
    files = [f for f in folder_paths.get_filename_list(folder_name) if f.endswith((".safetensors", ".sft", ".bin", ".pt", ".pth"))]
    return files + _official_folders(folder_name, subfolder_prefix)


def text_encoder_folders() -> list[str]:
    """Folders holding official ``tokenizer*/`` + ``text_encoder*/`` pairs, in the text encoder and diffusion model folders."""
    found = set()
    for folder_name in ("text_encoders", "diffusion_models"):
        for root in folder_paths.get_folder_paths(folder_name):
            root_path = Path(root)
            if not root_path.is_dir():
                continue
            for tokenizer in list(root_path.glob("*/tokenizer")) + list(root_path.glob("*/*/tokenizer")):
                if (tokenizer.parent / "text_encoder").is_dir() and (tokenizer.parent / "text_encoder_2").is_dir():
                    found.add(tokenizer.parent.relative_to(root_path).as_posix())
    return sorted(found)


def _check_relative_name(name: str, folder_names: tuple[str, ...]) -> None:
    """Refuse a name that is not a path inside a model folder: absolute (``/x``, ``C:\\x``) or
    climbing out with ``..`` (the combo lists only relative names; anything else came from an
    edited workflow and could read any file on the machine)."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.anchor or ".." in windows.parts:  # Windows parts split on / and \\
        where = " or ".join(f"models/{f}" for f in folder_names)
        raise ValueError(f"{name!r}: give a file or folder inside {where} as the list shows it, not an absolute "
                         "path or one that climbs out with '..'; put a link to the file in that folder instead")


def resolve_model_path(folder_names: tuple[str, ...], name: str) -> str:
    """Full path of a file or folder picked in a combo; a clear error if it is gone.

    Every root ComfyUI's ``folder_paths`` gives for the folders counts (``extra_model_paths.yaml``
    included), and so does whatever sits there as a link: a file symlinked from another disk
    loads as ComfyUI itself lists it, so no ``realpath`` test applies.
    """
    _check_relative_name(name, folder_names)
    for folder_name in folder_names:
        for root in folder_paths.get_folder_paths(folder_name):
            candidate = os.path.join(root, name)
            if os.path.exists(candidate):
                return candidate
    roots = [root for folder_name in folder_names for root in folder_paths.get_folder_paths(folder_name)]
    where = where_to_get(folder_names[0], name)
    raise ValueError(f"{name!r} is not in models/{'/'.join(folder_names)} (looked in {', '.join(roots)}): "
                     + (f"{where}; then refresh the page" if where else "put it there and refresh the page"))


def check_model_input(folder_names: tuple[str, ...], name, kinds: tuple[str, ...], loader: str,
                      fits_kind=None) -> bool | str:
    """A loader's queue-time check of its file (V3 ``validate_inputs``): ``True``, or the reason
    to refuse the prompt before any node runs: the file is absent (where it was looked for, its
    address, the download command), or of another kind than ``kinds`` (read from its
    safetensors headers, a few KB), or ``fits_kind(kind)`` raised ``ValueError`` for it (the
    loader's other inputs against the file: the DiT Loader's variant)."""
    if not isinstance(name, str):          # wired from another node: checked when it runs
        return True
    try:
        path = resolve_model_path(folder_names, name)
        kind = kind_from_headers(path)
        if kind is not None and kind not in kinds:
            return (f"{name!r} in models/{folder_names[0]} is {KIND_DESCRIPTIONS[kind]}; the {loader} takes "
                    f"{' or '.join(KIND_DESCRIPTIONS[k] for k in kinds)}: pick another file, or load this one "
                    f"with the {'Pyramid Flow VAE Loader' if kind == 'vae' else 'Pyramid Flow DiT Loader'}")
    except (ValueError, FileNotFoundError) as err:
        return str(err) if name in str(err) else f"{name!r}: {err}"
    try:
        if fits_kind is not None and kind is not None:
            fits_kind(kind)
    except ValueError as err:
        return f"{name!r} in models/{folder_names[0]}: {err}"
    return True


# ComfyUI calls a node's validate_inputs with only the inputs it names, and repeats a refusal
# under every one of them. To check a file against another of its inputs (the DiT Loader's
# variant) in one message, a loader names only the file and reads the other input from the
# prompt being queued, kept here by an on_prompt handler: it runs in the /prompt request's own
# task just before ComfyUI validates the prompt, so each request sees its own prompt.
_QUEUED_PROMPT: ContextVar[dict] = ContextVar("pyramid_flow_queued_prompt", default={})


def remember_queued_prompt(json_data: dict) -> dict:
    """ComfyUI ``on_prompt`` handler: keeps the queued prompt for :func:`queued_input`."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    _QUEUED_PROMPT.set(prompt if isinstance(prompt, dict) else {})
    return json_data


def register_prompt_hook() -> None:
    """Install :func:`remember_queued_prompt` on the running server (once; none: nothing to do)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None and remember_queued_prompt not in server.on_prompt_handlers:
        server.add_on_prompt_handler(remember_queued_prompt)


def queued_input(node_id, name: str):
    """Input ``name`` of node ``node_id`` in the prompt being queued: its widget value, or
    ``None`` (no such prompt or node, or the input is wired from another node)."""
    node = _QUEUED_PROMPT.get().get(str(node_id)) if node_id is not None else None
    value = node.get("inputs", {}).get(name) if isinstance(node, dict) else None
    return None if isinstance(value, list) else value


def check_memory_for(shape: tuple[int, ...], sampler: bool = False) -> None:
    """Refuse latents of ``shape`` (or a sampler's latents and noise for them) that ComfyUI's
    intermediate device, where LATENTs live, cannot hold."""
    device = comfy.model_management.intermediate_device()
    free, where = comfy.model_management.get_free_memory(device), f"the {device.type.upper()} memory"
    (check_sampler_fits if sampler else check_latents_fit)(shape, free, where)


# --------------------------------------------------------------------------------------
# progress, preview, interrupt
# --------------------------------------------------------------------------------------

def latent_preview_image(latents: torch.Tensor, variant: Variant, first_frame: bool,
                         factors: PreviewFactors = BUILTIN_FACTORS, size: tuple[int, int] | None = None):
    """An RGB picture of the last latent frame of the first video (PIL image), in the colours
    ``factors`` give the VAE's latents (see ``pyramid_core.preview``).

    ``latents`` is ``(B, 16, T, h, w)``; the picture is ``h x w`` pixels, or ``size``
    (width, height), scaled bilinearly.
    """
    from PIL import Image

    rgb = latent_preview_rgb(latents[0, :, -1], variant, first_frame, factors)      # (h, w, 3) in [0, 1]
    image = Image.fromarray(rgb.mul(255).to(torch.uint8).numpy())
    return image if size is None or image.size == size else image.resize(size, Image.Resampling.BILINEAR)


def video_size_of_stage(latents: torch.Tensor, variant: Variant, stage_index: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the video that stage ``stage_index``'s latents
    ``(B, C, T, h, w)`` become: each later stage doubles both sides, the VAE multiplies by 8."""
    factor = VAE_SPATIAL_FACTOR * 2 ** (variant.num_stages - 1 - stage_index)
    return latents.shape[-1] * factor, latents.shape[-2] * factor


def preview_choices() -> list[str]:
    """The built-in preview colours, then factor files (fit-preview's JSON) in models/vae."""
    files = set()
    for root in folder_paths.get_folder_paths("vae"):
        if Path(root).is_dir():
            files.update(p.relative_to(root).as_posix() for p in Path(root).rglob("*.json")
                         if p.name != "config.json")
    return [BUILTIN_PREVIEW, *sorted(files)]


def load_preview_factors(choice: str) -> PreviewFactors:
    if choice == BUILTIN_PREVIEW:
        return BUILTIN_FACTORS
    return PreviewFactors.load(resolve_model_path(("vae",), choice))


def _previews_enabled() -> bool:
    from comfy.cli_args import LatentPreviewMethod, args

    return args.preview_method != LatentPreviewMethod.NoPreviews


def piece_callback():
    """The ``progress`` of ``CausalVideoVAE.encode``/``decode`` in a node: after every temporal
    chunk of every tile, stop if the user pressed Cancel, and advance the node's progress bar."""
    state = {}

    def report(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if "bar" not in state:
            state["bar"] = comfy.utils.ProgressBar(total)
        state["bar"].update_absolute(done, total)

    return report


def step_callback(total_steps: int, dit: ModelHandle, start_frame: int | None = None):
    """The ``pyramid_core`` step callback of a sampling node.

    Every step: stop if the user pressed Cancel (the exception ends the prompt within
    that step), then advance the node's progress bar with a preview of the current latent,
    in the DiT handle's preview colours. ``start_frame`` is where the unit being sampled
    starts (for one-unit nodes; the Video Sampler's reports say it themselves).
    """
    progress = comfy.utils.ProgressBar(total_steps)
    previews = _previews_enabled()
    factors = dit.preview or BUILTIN_FACTORS

    def report(info) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        preview = None
        if previews:
            first = (info.start_frame if start_frame is None else start_frame) == 0
            # At the video's own size, and sent as it is (no max size): ComfyUI would scale a
            # small latent picture up to 512 px, and the page labels a preview with its size.
            size = video_size_of_stage(info.latents, dit.variant, info.stage_index)
            preview = ("JPEG", latent_preview_image(info.latents, dit.variant, first, factors, size), None)
        progress.update_absolute(info.step, info.total_steps, preview)

    return report
