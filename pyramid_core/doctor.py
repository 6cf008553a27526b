"""``python -m pyramid_core doctor``: what a bug report needs, and what to use on this machine.

Versions (Python, torch with its CUDA, Triton, diffusers, transformers, ComfyUI when it is
importable), the devices with their free memory, each attention backend and whether it
works here (the kernels' self-check is run, see :mod:`pyramid_core.attention.selfcheck`),
the dtypes each device computes in, and recommended settings: precision, where the weights
live (offload), and the VAE tiling for 384p and 768p.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import sys
from dataclasses import dataclass

import torch

from .attention import BACKENDS, available_backends, disk_cache, varlen_attention
from .attention.selfcheck import verify
from .loading import computes_bf16
from .sizes import free_host_memory

GIB = 2**30
PACKAGES = ("torch", "triton", "diffusers", "transformers", "safetensors", "av", "numpy")

# Memory the released models need, for the recommendations (weights only; activations come
# on top): the DiT has 2.0 B parameters, T5-XXL 4.8 B, the VAE 0.34 B.
DIT_GIB = {"bf16": 3.7, "fp8": 1.9}
TEXT_ENCODERS_GIB = 9.0
# A 5 s video (121 frames, 16 latent frames): what the VAE advice is computed for.
VIDEO_LATENT_FRAMES = 16


@dataclass
class Device:
    name: str                 # "cpu", "cuda:0", "mps"
    description: str
    total_gib: float | None
    free_gib: float | None
    compute_dtypes: list[str]
    fp8_matmul: bool


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    found.update({package: _version(package) for package in PACKAGES})
    if torch.version.hip:
        found["torch gpu"] = f"ROCm {torch.version.hip}"
    else:
        found["torch cuda"] = torch.version.cuda or "none (CPU build)"
    if torch.cuda.is_available():
        found["nvidia driver"] = _nvidia_driver()
    found["comfyui"] = _comfyui_version()
    return found


def _nvidia_driver() -> str:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return "unknown (no nvidia-smi)"
    done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"


def _comfyui_version() -> str:
    """ComfyUI's version when this runs inside it (or COMFYUI_DIR points at it)."""
    folder = os.environ.get("COMFYUI_DIR")
    if folder and folder not in sys.path:
        sys.path.append(folder)
    try:
        return importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        return "not found (run inside ComfyUI's python, or set COMFYUI_DIR)"


def devices() -> list[Device]:
    cpu_total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    free = free_host_memory()
    found = [Device("cpu", f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                           f"torch uses {torch.get_num_threads()} threads, kernels {torch.backends.cpu.get_cpu_capability()}",
                    cpu_total / GIB if cpu_total else None, free / GIB if free else None, ["fp32", "bf16"], False)]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        properties = torch.cuda.get_device_properties(index)
        free_bytes, total_bytes = torch.cuda.mem_get_info(index)
        capability = torch.cuda.get_device_capability(index)
        dtypes = ["fp32", "fp16"] + (["bf16"] if computes_bf16(f"cuda:{index}") else [])
        found.append(Device(f"cuda:{index}", f"{properties.name}, compute capability {capability[0]}.{capability[1]}",
                            total_bytes / GIB, free_bytes / GIB, dtypes, capability >= (8, 9)))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append(Device("mps", "Apple GPU (MPS)", None, None, ["fp32", "fp16", "bf16"], False))
    return found


def attention_report(device: Device) -> dict[str, str]:
    """Each backend on this device, in its best compute dtype: works (checked) or why not."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        "bf16" if "bf16" in device.compute_dtypes and device.name != "cpu" else
        "fp16" if "fp16" in device.compute_dtypes and device.name != "cpu" else "fp32"]
    probe = torch.zeros(4, 2, 64, dtype=dtype, device=device.name)
    frames = torch.zeros(4, dtype=torch.int32, device=device.name)
    report = {}
    for name in BACKENDS[1:]:
        masked = name in ("sdpa", "triton", "flex")      # flash-attn and sage serve mask-free calls only
        reason = available_backends(probe, frames if masked else None)[name]
        if reason is not None:
            report[name] = f"unavailable: {reason}"
            continue
        run = lambda q, k, v, cu, f, backend=name: varlen_attention(q, k, v, cu, frame_ids=f, backend=backend)  # noqa: E731
        problem = verify(run, device.name, dtype, masked=masked)
        # sage has no backward anywhere, flex none off CUDA
        inference_only = name == "sage" or (name == "flex" and not device.name.startswith("cuda"))
        if problem is None and not inference_only:
            problem = verify(run, device.name, dtype, masked=masked, backward=True)
        dtype_name = str(dtype).removeprefix("torch.")
        passed = f"works ({dtype_name}, self-check passed{'; inference only' if inference_only else ''})"
        report[name] = passed if problem is None else f"FAILS ({dtype_name}): {problem}"
    return report


def _vae_tiles(width: int, height: int, free_gib: float, device_type: str) -> str:
    """What the VAE nodes' auto tiles (tile_size 0) do for a 5 s video at this size and free
    memory (the VAE in fp32 on the CPU, in 16 bits on a GPU)."""
    from .models.vae import CausalVideoVAE
    from .models.vae.budget import choose_tiles, plan_tiles

    with torch.device("meta"):                 # the constructor's defaults are the released layers
        vae = CausalVideoVAE().to(torch.float32 if device_type == "cpu" else torch.bfloat16)
    shape = (1, vae.latent_channels, VIDEO_LATENT_FRAMES, height // 8, width // 8)
    choice = choose_tiles(plan_tiles(vae, "decode", shape, 1, device_type), int(free_gib * GIB))
    if choice.tile_size is None:
        return f"tile_size 0 (auto: whole frames fit, {choice.peak_bytes / GIB:.1f} GiB)"
    return f"tile_size 0 (auto: {choice.tile_size} px tiles, {choice.peak_bytes / GIB:.1f} GiB)"


def recommendations(device: Device) -> dict[str, str]:
    """Precision, offload and VAE tiling for this device, from the memory figures above."""
    if device.name == "cpu":
        free = device.free_gib or 16.0
        return {"precision": "fp32 (CPU kernels; expect minutes per video unit at full size)",
                "offload": "not applicable",
                **{label: _vae_tiles(w, h, free, "cpu") for label, (w, h) in (("vae 384p", (640, 384)),
                                                                             ("vae 768p", (1280, 768)))}}
    free = device.free_gib or 0.0
    precision = "bf16" if "bf16" in device.compute_dtypes else "fp16 (no bf16 on this GPU; T5 may need fp32)"
    # room for the activations of a 768p unit and the VAE besides the weights: about 8 GiB
    if free >= DIT_GIB["bf16"] + TEXT_ENCODERS_GIB + 8:
        offload = "keep_on_gpu (everything fits)"
    elif free >= DIT_GIB["bf16"] + 6:
        offload = "auto (the text encoders are moved out while the DiT samples)"
    else:
        offload = ("offload_after_use, with fp8_e4m3fn DiT storage and the text encoders on the CPU; "
                   "block_swap on the DiT Loader if it still runs out of memory")
    tiling = {label: _vae_tiles(w, h, free, "cuda") for label, (w, h) in (("vae 384p", (640, 384)),
                                                                        ("vae 768p", (1280, 768)))}
    return {"precision": precision, "offload": offload, **tiling}


def collect() -> dict:
    found = devices()
    return {
        "versions": versions(),
        "devices": [dict(vars(d)) for d in found],
        "attention": {d.name: attention_report(d) for d in found if d.name != "mps"},
        "recommended": {d.name: recommendations(d) for d in found},
        "attention_backends": list(BACKENDS),
        "attention_cache": str(disk_cache.shared.path),
    }


def format_report(report: dict) -> str:
    lines = ["Pyramid Flow doctor", "", "versions:"]
    lines += [f"  {name:14s} {value}" for name, value in report["versions"].items()]
    lines += ["", "devices:"]
    for device in report["devices"]:
        memory = (f"{device['free_gib']:.1f} GiB free of {device['total_gib']:.1f} GiB"
                  if device["free_gib"] is not None and device["total_gib"] is not None else "memory unknown")
        lines.append(f"  {device['name']:8s} {device['description']}; {memory}")
        lines.append(f"  {'':8s} computes in {', '.join(device['compute_dtypes'])}; "
                     f"fp8 matmul {'yes' if device['fp8_matmul'] else 'no'}")
    for name, backends in report["attention"].items():
        lines += ["", f"attention on {name}:"]
        lines += [f"  {backend:10s} {status}" for backend, status in backends.items()]
    lines += ["", f"attention choices and kernel checks of this GPU are kept in {report['attention_cache']}",
              "  (python -m pyramid_core cache shows them, --clear forgets them)"]
    for name, advice in report["recommended"].items():
        lines += ["", f"recommended on {name}:"]
        lines += [f"  {key:10s} {value}" for key, value in advice.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pyramid_core doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = collect()
    print(json.dumps(report, indent=1, default=str) if args.json else format_report(report))
    return 0
