"""Load the released Pyramid Flow checkpoints: official folders and single files.

One call per component (:func:`load_dit`, :func:`load_vae`) takes either a diffusers-style
folder (``config.json`` + ``diffusion_pytorch_model*.safetensors``) or a single
``.safetensors`` file as ComfyUI users keep them in ``models/diffusion_models`` and
``models/vae`` (same tensor names; the config is derived from the tensor shapes). It
detects the architecture from the tensor names, refuses a checkpoint of another kind with a
message that says what the file is, builds the model on the meta device (so a 2 B-parameter
model never exists twice in memory) and loads with ``strict=True``.

``.bin``/``.pt`` files are read only with ``torch.load(weights_only=True)``; nothing
unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open

from .models.fp8_linear import FP8, fp8_linear_names, use_fp8_linears

# ComfyUI and other tools sometimes save with a wrapper prefix; the official names follow it.
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "first_stage_model.", "vae.", "transformer.")
SAFETENSORS_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
}
KIND_DESCRIPTIONS = {
    "flux": "a miniFLUX pyramid DiT (PyramidFluxTransformer)",
    "mmdit": "an SD3 pyramid DiT (PyramidDiffusionMMDiT)",
    "vae": "a causal video VAE (CausalVideoVAE)",
}


# --------------------------------------------------------------------------------------
# reading tensors
# --------------------------------------------------------------------------------------

def _strip_prefix(state_dict: dict) -> dict:
    """The dict with a wrapper prefix that every name shares removed (values unchanged)."""
    for prefix in KNOWN_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _unprefixed(name: str) -> str:
    return next((name[len(p):] for p in KNOWN_PREFIXES if name.startswith(p)), name)


def _unreadable(path: Path, err: SafetensorError) -> ValueError:
    return ValueError(f"{path} is not a readable .safetensors file ({err}); it may be truncated: download it again")


def _read_safetensors(path: Path, dtype_for=None) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            if dtype_for is None:
                return {name: f.get_tensor(name) for name in f.keys()}
            # Cast each tensor as it is read: the file's precision never exists in full.
            return {name: _cast(f.get_tensor(name), dtype_for(_unprefixed(name))) for name in f.keys()}
    except SafetensorError as err:
        raise _unreadable(path, err) from None


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses anything but tensors and plain containers
        raise ValueError(f"{path} could not be read as a weights-only torch checkpoint ({err}); "
                         "use the .safetensors release instead") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return obj


def _folder_weight_files(folder: Path) -> list[Path]:
    for name in SAFETENSORS_NAMES:
        index = folder / f"{name}.index.json"
        if index.is_file():  # sharded release
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / shard for shard in shards]
        if (folder / name).is_file():
            return [folder / name]
    singles = sorted(folder.glob("*.safetensors")) or sorted(
        p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not singles:
        raise ValueError(f"{folder} holds no weights (no diffusion_pytorch_model.safetensors or shards)")
    return singles


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def read_state_dict(path: str | Path, dtype_for=None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder or file, on the CPU, with wrapper prefixes removed.

    ``dtype_for(name)``: the dtype each floating-point tensor is cast to as it is read (None:
    as stored); names are given without wrapper prefixes."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    files = _folder_weight_files(path) if path.is_dir() else [path]
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            state_dict.update(_read_safetensors(file, dtype_for))
        elif file.suffix in PICKLE_SUFFIXES:
            tensors = _read_pickle(file)
            if dtype_for is not None:
                for name in tensors:
                    tensors[name] = _cast(tensors[name], dtype_for(_unprefixed(name)))
            state_dict.update(tensors)
        else:
            raise ValueError(f"{file}: unsupported checkpoint format {file.suffix!r}; "
                             "use .safetensors (or a weights-only .bin/.pt)")
    return _strip_prefix(state_dict)


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names (wrapper prefixes removed) and shapes of a checkpoint, without reading
    the tensors of a .safetensors file (its header says them)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    files = _folder_weight_files(path) if path.is_dir() else [path]
    if any(file.suffix != ".safetensors" for file in files):
        return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}
    shapes = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
        except SafetensorError as err:
            raise _unreadable(file, err) from None
    return _strip_prefix(shapes)


def read_config(path: str | Path) -> dict | None:
    """The config stored with a checkpoint, or ``None``.

    Folders carry ``config.json``; single ``.safetensors`` files written by
    :func:`save_checkpoint` carry it in their metadata under ``"config"``.
    """
    path = Path(path)
    if path.is_dir():
        config = path / "config.json"
        return json.loads(config.read_text()) if config.is_file() else None
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
        except SafetensorError:
            return None  # read_state_dict reports the broken file
        return json.loads(metadata["config"]) if "config" in metadata else None
    return None


# --------------------------------------------------------------------------------------
# what is this checkpoint?
# --------------------------------------------------------------------------------------

def detect_kind(names) -> str:
    """``"flux"``, ``"mmdit"`` or ``"vae"`` from tensor names; ``ValueError`` saying what else it is."""
    names = set(names)
    has = lambda pattern: any(re.match(pattern, n) for n in names)  # noqa: E731
    if has(r"encoder\.down_blocks\.") and has(r"decoder\.up_blocks\.") and has(r"encoder\.conv_in\.conv\."):
        return "vae"
    if has(r"single_transformer_blocks\.\d+\.") and "x_embedder.weight" in names:
        return "flux"
    if "pos_embed.proj.weight" in names and has(r"transformer_blocks\.\d+\.attn\.add_q_proj\."):
        return "mmdit"
    if has(r".*lora_(A|B|down|up)"):
        what = "a LoRA; load it with the LoRA loader on top of a DiT"
    elif has(r"(text_model|encoder\.block\.\d+\.layer|shared\.weight)"):
        what = "a text encoder (CLIP or T5); load it with DualCLIPLoader or the text encoder loader"
    elif has(r"(decoder\.up_blocks|encoder\.down_blocks)"):
        what = "an image VAE of another model family, not Pyramid Flow's causal video VAE"
    elif has(r"(double_blocks|input_blocks|joint_blocks)\."):
        what = "a diffusion model of another family (FLUX.1, SD, SD3 in ComfyUI layout), not Pyramid Flow"
    else:
        what = "not a checkpoint this pack knows"
    raise ValueError(f"this checkpoint is {what}")


def kind_from_headers(path: str | Path) -> str | None:
    """:func:`detect_kind` of a checkpoint read from its ``.safetensors`` headers alone (a few KB,
    however large the file), or ``None`` where that would mean reading pickled weights (.bin).

    Raises ``ValueError`` saying what the checkpoint is when it is none of ours, and
    ``FileNotFoundError`` when there is nothing at ``path``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    files = _folder_weight_files(path) if path.is_dir() else [path]
    if any(file.suffix != ".safetensors" for file in files):
        return None
    return detect_kind(read_shapes(path))


def _count(names, pattern: str) -> int:
    indices = {int(m.group(1)) for n in names if (m := re.match(pattern, n))}
    return max(indices) + 1 if indices else 0


def config_from_state_dict(kind: str, shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """The constructor config of a single-file checkpoint, derived from its tensor shapes.

    Args:
        kind: ``"flux"``, ``"mmdit"`` or ``"vae"``.
        shapes: tensor name -> shape.

    Returns:
        Keyword arguments for the model class (its defaults fill the rest).
    """
    if kind == "flux":
        head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
        inner, in_channels = shapes["x_embedder.weight"]
        return dict(
            in_channels=in_channels,
            num_layers=_count(shapes, r"transformer_blocks\.(\d+)\."),
            num_single_layers=_count(shapes, r"single_transformer_blocks\.(\d+)\."),
            attention_head_dim=head_dim,
            num_attention_heads=inner // head_dim,
            joint_attention_dim=shapes["context_embedder.weight"][1],
            pooled_projection_dim=shapes["time_text_embed.text_embedder.linear_1.weight"][1],
            # RoPE has no weights; the release splits the head as 1/4 time, 3/8 height, 3/8 width.
            axes_dims_rope=[head_dim // 4, head_dim * 3 // 8, head_dim * 3 // 8],
        )
    if kind == "mmdit":
        inner, in_channels, patch, _ = shapes["pos_embed.proj.weight"]
        head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
        config = dict(
            in_channels=in_channels,
            patch_size=patch,
            num_layers=_count(shapes, r"transformer_blocks\.(\d+)\."),
            attention_head_dim=head_dim,
            num_attention_heads=inner // head_dim,
            joint_attention_dim=shapes["context_embedder.weight"][1],
            caption_projection_dim=shapes["context_embedder.weight"][0],
            pooled_projection_dim=shapes["time_text_embed.text_embedder.linear_1.weight"][1],
        )
        if "pos_embed.pos_embed" in shapes:
            config["pos_embed_max_size"] = round(shapes["pos_embed.pos_embed"][1] ** 0.5)
        return config
    if kind == "vae":
        # One VAE architecture was released; its config is the class default. Checkpoints of
        # other sizes carry their config in the file's metadata (see save_checkpoint).
        return {}
    raise ValueError(f"unknown component kind {kind!r}")


# --------------------------------------------------------------------------------------
# building models
# --------------------------------------------------------------------------------------

def model_class(kind: str):
    """The ``pyramid_core.models`` class of a component kind."""
    from .models import CausalVideoVAE, PyramidDiffusionMMDiT, PyramidFluxTransformer

    return {"flux": PyramidFluxTransformer, "mmdit": PyramidDiffusionMMDiT, "vae": CausalVideoVAE}[kind]


def model_kind(model: torch.nn.Module) -> str:
    """``"flux"``, ``"mmdit"`` or ``"vae"`` for a loaded model; the inverse of :func:`model_class`."""
    for kind in KIND_DESCRIPTIONS:
        if isinstance(model, model_class(kind)):
            return kind
    raise ValueError(f"{type(model).__name__} is not a Pyramid Flow model")


@contextmanager
def parameters_on_meta():
    """Create module parameters on the meta device (buffers stay real, e.g. RoPE tables).

    The model is then filled with ``load_state_dict(assign=True)``, so the weights exist once.
    """
    original = torch.nn.Module.register_parameter

    def register_on_meta(module, name, param):
        original(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bf16"``/``"fp16"``/``"fp32"``/``"fp8_e4m3fn"`` or a torch dtype -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return WEIGHT_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(WEIGHT_DTYPES)}") from None


def computes_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: CUDA GPUs from Ampere on (compute
    capability 8.0; older ones only emulate it, slowly), every ROCm GPU, and other devices."""
    device = torch.device(device)
    if device.type != "cuda" or torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def check_dtype_supported(dtype: str | torch.dtype, device: str | torch.device) -> None:
    """One sentence, before anything loads, when ``device`` cannot compute in ``dtype``
    (bf16 on CUDA GPUs before Ampere, which only emulate it)."""
    device = torch.device(device)
    if resolve_dtype(dtype) != torch.bfloat16 or device.type != "cuda" or not torch.cuda.is_available():
        return
    if not computes_bf16(device):
        raise ValueError(f"{torch.cuda.get_device_name(device)} cannot compute in bf16: choose fp16 (or fp32) "
                         "for the models on this GPU")


def _meta_model(kind: str, config: dict) -> torch.nn.Module:
    with parameters_on_meta():
        return model_class(kind).from_config(config)


def build_from_state_dict(kind: str, state_dict: dict[str, torch.Tensor], config: dict | None,
                          dtype: torch.dtype, storage_dtype: torch.dtype | None = None,
                          model: torch.nn.Module | None = None) -> torch.nn.Module:
    """Build the ``kind`` model from ``config`` (or the tensor shapes) and load it strictly.

    ``state_dict`` is cast to ``dtype`` in place: its tensors become the model's parameters.
    ``storage_dtype`` (fp8): the Linear weights are kept in it instead (:mod:`.models.fp8_linear`).
    ``model``: the model already built on the meta device from ``config``.
    """
    cls = model_class(kind)
    if config is None:
        config = config_from_state_dict(kind, {k: tuple(v.shape) for k, v in state_dict.items()})
    if model is None:
        model = _meta_model(kind, config)
    narrow = fp8_linear_names(model) if storage_dtype is not None else set()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        def show(names):
            return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        problems = [f"{what}: {show(names)}" for what, names in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
        raise ValueError(f"checkpoint does not match {cls.__name__} built from its config; "
                         + "; ".join(problems))
    # Cast entry by entry in the caller's dict, so each original tensor is freed as its copy is
    # made: the weights never exist twice in full.
    for name, tensor in state_dict.items():
        state_dict[name] = _cast(tensor, storage_dtype if name in narrow else dtype)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if narrow:
        use_fp8_linears(model)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"{cls.__name__}: tensors left on the meta device after loading: {leftover[:5]}")
    # Parameters already have ``dtype``; non-persistent buffers (RoPE tables) keep theirs.
    return model.eval().requires_grad_(False)


def _load(path: str | Path, wanted: tuple[str, ...], dtype, device, storage_dtype=None) -> torch.nn.Module:
    """Read, check, build and place a model; every tensor is cast to its final dtype as it is
    read, so neither the file's precision nor a second copy ever exists in full in RAM, and
    the device only ever receives the final (e.g. fp8) weights."""
    shapes = read_shapes(path)
    kind = detect_kind(shapes)
    if kind not in wanted:
        loader = "the VAE loader (load_vae)" if kind == "vae" else "the DiT loader (load_dit)"
        raise ValueError(f"{Path(path).name} is {KIND_DESCRIPTIONS[kind]}; load it with {loader}")
    config = read_config(path) or config_from_state_dict(kind, shapes)
    model = _meta_model(kind, config)
    compute = resolve_dtype(dtype)
    narrow = fp8_linear_names(model) if storage_dtype is not None else set()
    state_dict = read_state_dict(path, lambda name: storage_dtype if name in narrow else compute)
    model = build_from_state_dict(kind, state_dict, config, compute, storage_dtype, model=model)
    return torch.nn.Module.to(model, device)  # diffusers' .to() warns about dtypes we set on purpose


def load_dit(path: str | Path, *, dtype: str | torch.dtype = "bf16", weight_dtype: str | torch.dtype | None = None,
             device: str | torch.device = "cpu") -> torch.nn.Module:
    """A pyramid DiT (miniFLUX or SD3) from an official folder or a single file.

    Args:
        path: ``diffusion_transformer_*`` folder or ``.safetensors`` file.
        dtype: compute dtype (``"bf16"``, ``"fp16"``, ``"fp32"``).
        weight_dtype: optional storage dtype for the Linear weights, ``"fp8_e4m3fn"`` to halve
            memory: read straight into fp8 (no full copy in ``dtype`` on the host or the
            device); fp8 matmuls on GPUs that have them, computation in ``dtype`` elsewhere.
        device: where the model goes.

    Returns:
        ``PyramidFluxTransformer`` or ``PyramidDiffusionMMDiT`` in eval mode.
    """
    compute = resolve_dtype(dtype)
    if compute == torch.float8_e4m3fn:
        raise ValueError("fp8 is a storage format: pass dtype='bf16', weight_dtype='fp8_e4m3fn'")
    storage = None if weight_dtype is None or resolve_dtype(weight_dtype) == compute else resolve_dtype(weight_dtype)
    if storage not in (None, FP8):
        raise ValueError(f"weight_dtype={weight_dtype!r}: the narrow storage format is fp8_e4m3fn")
    return _load(path, ("flux", "mmdit"), compute, device, storage_dtype=storage)


def load_vae(path: str | Path, *, dtype: str | torch.dtype = "bf16",
             device: str | torch.device = "cpu") -> torch.nn.Module:
    """The causal video VAE from a ``causal_video_vae`` folder or a single file, in eval mode."""
    return _load(path, ("vae",), dtype, device)


def save_checkpoint(model, path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as one ``.safetensors`` file with its config in the metadata.

    The write is atomic (temporary file, then rename), so a crash never leaves half a file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in model.state_dict().items()}
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"config": json.dumps(config), "format": "pt"})
    tmp.replace(path)
    return path
