"""One command that proves a CUDA GPU: correctness, speed and memory, in one JSON file.

    python benchmarks/gpu_check.py [--out benchmarks/results] [--budget 330] [--skip SECTION ...]

Sections, in order (each records its figures or its error, and the file is rewritten after
each one, so a run cut short keeps what it measured):

* ``environment``: GPU, compute capability, memory, driver, torch, CUDA, Triton, flash-attn.
* ``kernel_correctness``: our Triton kernels against fp32 SDPA in bf16 and fp16, forward and
  dq/dk/dv, at the real sequence shapes of the last unit of a 5 s 384p and a 10 s 768p video
  (a CFG pair; text, history clips and the noisy frame; frame-causal mask), 30 heads x 64.
* ``attention_speed``: the same shapes in bf16, forward and forward+backward: ours, masked
  SDPA (what the reference runs), our block-causal SDPA backend, ``auto`` (and which backend
  it chose), ``flex_attention`` with a block mask, and flash-attn without the mask when
  installed; median milliseconds and peak memory.
* ``t2v_384p``: the full-size miniFLUX (released config, random bf16 weights): a 5 s 384p
  text-to-video (16 latent frames, steps 20,20,20 / 10,10,10) with attention ``auto``, our
  kernels and our SDPA backend: seconds per unit, in all, peak memory. (The reference
  README: 5 s at 768p takes 5.5 min on one A100.)
* ``vae_decode``: the full-size VAE (random bf16) decoding 121 frames at 384p and 768p with
  the pack's default settings (one latent frame per chunk, no tiles): seconds, peak memory.
* ``model_load``: peak host RAM and GPU memory of loading the DiT in bf16 and with fp8 weight
  storage (each load in a fresh process).
* ``memory_caps``: a whole 5 s 768p video (sampling + VAE decode with auto tiles) under GPU
  memory caps (``set_per_process_memory_fraction``), each in a fresh process
  (``video_under_cap.py``): default bf16 uncapped, then 24 and 12 GiB; fp8 weights at 12 and
  8 GiB; fp8 + block swap (half the blocks) at 8 GiB. Complete or not, peak and seconds per
  phase, the tiles chosen, and each run's time against the uncapped one with its weights.
* ``training``: a DiT training step of the released recipe (full-size miniFLUX, fp32 weights,
  bf16 autocast, AdamW, gradient checkpointing; stage columns 1,2,1 with the temporal
  pyramid) on 5 s clips at 384p and 768p, with attention auto, our kernels and SDPA; and a
  VAE reconstruction step on 17 frames at 256x256: seconds per step and peak memory.
* ``t2v_768p``: as ``t2v_384p`` at 1280x768, 10 s, as far as the time budget allows.

Without CUDA it says so and exits 0. The budget (seconds) bounds the whole run: a section
that would start without time left is skipped, and the video runs stop when it runs out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = ("environment", "kernel_correctness", "attention_speed", "t2v_384p", "vae_decode", "model_load",
            "memory_caps", "training", "t2v_768p")
RESOLUTIONS = {  # name: (width, height, latent frames of the video) -- 5 s at 384p, 10 s at 768p
    "384p": (640, 384, 16),
    "768p": (1280, 768, 31),
}
HEADS, HEAD_DIM, TEXT_TOKENS, VALID_TEXT = 30, 64, 128, 40
REQUIRED_KEYS = {"schema", "created", "budget_seconds", "sections"}
SCHEMA = "pyramid-flow-gpu-check/1"


class OutOfTime(Exception):
    """Raised inside a long run when the budget is spent."""


# ---------------------------------------------------------------------------------------------
# shapes (CPU-side, tested)
# ---------------------------------------------------------------------------------------------

def sequence_layout(resolution: str, device: str = "cpu"):
    """The attention sequences of the last unit of a video at the top stage: a CFG pair, each
    its valid text tokens then the history clips and the noisy frame (the reference's temporal
    pyramid), as the DiT packs them.

    Returns ``(cu_seqlens int32 (3,), frame_ids int32 (T,))``.
    """
    from pyramid_core.models.dit_tokens import TokenLayout, normalize_sample
    from pyramid_core.sampling import build_temporal_history

    width, height, frames = RESOLUTIONS[resolution]
    latent_h, latent_w = height // 8, width // 8
    past = torch.zeros(1, 16, frames - 1, latent_h, latent_w, device=device)
    history = build_temporal_history(past, num_stages=3)
    clips = [c.expand(2, *c.shape[1:]) for c in history.clips[2]]
    noisy = torch.zeros(2, 16, 1, latent_h, latent_w, device=device)
    mask = torch.zeros(2, TEXT_TOKENS, dtype=torch.bool, device=device)
    mask[:, :VALID_TEXT] = True
    layout = TokenLayout(normalize_sample([clips + [noisy]]), 2, mask, TEXT_TOKENS, frame_causal=True)
    return layout.cu_seqlens, layout.frame_ids


def attention_inputs(resolution: str, dtype: torch.dtype, device: str, seed: int = 0):
    cu, frames = sequence_layout(resolution, device)
    total = int(cu[-1])
    generator = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(total, HEADS, HEAD_DIM, generator=generator, device=device, dtype=dtype)
               for _ in range(3))
    return q, k, v, cu, frames


def validate_report(report: dict) -> None:
    """``ValueError`` unless ``report`` has the layout tools read (tested)."""
    missing = REQUIRED_KEYS - set(report)
    if missing or report.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} report (missing {sorted(missing)})")
    for name, section in report["sections"].items():
        if name not in SECTIONS:
            raise ValueError(f"unknown section {name!r}")
        if not isinstance(section, dict) or not ({"seconds", "error", "skipped"} & set(section)):
            raise ValueError(f"section {name!r} records neither its seconds, an error nor why it was skipped")


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------

def _sync():
    torch.cuda.synchronize()


def _peak_gib(reset: bool = False) -> float:
    value = torch.cuda.max_memory_allocated() / 2**30
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return round(value, 3)


def _median_ms(fn, repeats: int = 10) -> float:
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def environment(args) -> dict:
    props = torch.cuda.get_device_properties(0)
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip().splitlines()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        import flash_attn
        flash_version = flash_attn.__version__
    except ImportError:
        flash_version = None
    return {"gpu": props.name, "capability": list(torch.cuda.get_device_capability(0)),
            "memory_gib": round(props.total_memory / 2**30, 1), "driver": driver[0] if driver else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "flash_attn": flash_version, "python": platform.python_version()}


def _reference(q, k, v, cu, frames):
    from pyramid_core.attention.sdpa import varlen_attention_sdpa

    return varlen_attention_sdpa(q, k, v, cu, frames)


def _reference_with_gradients(q, k, v, cu, frames, weights, heads_per_chunk: int = 6):
    """fp32 SDPA output and dq, dk, dv for ``sum(out * weights)``, a few heads at a time (the
    768p sequences hold 15,400 tokens: all heads' fp32 scores at once would take ~60 GB)."""
    outs, grads = [], [[], [], []]
    for head in range(0, q.shape[1], heads_per_chunk):
        part = slice(head, head + heads_per_chunk)
        qc, kc, vc = (t[:, part].detach().float().requires_grad_() for t in (q, k, v))
        out = _reference(qc, kc, vc, cu, frames)
        for store, grad in zip(grads, torch.autograd.grad(out, (qc, kc, vc), weights[:, part].float())):
            store.append(grad)
        outs.append(out.detach())
    return torch.cat(outs, dim=1), *(torch.cat(g, dim=1) for g in grads)


def kernel_correctness(args) -> dict:
    from pyramid_core.attention import selfcheck
    from pyramid_core.attention.triton_varlen import varlen_attention_triton

    out = {}
    for resolution in RESOLUTIONS:
        for dtype in (torch.bfloat16, torch.float16):
            q, k, v, cu, frames = attention_inputs(resolution, dtype, "cuda")
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            ours = varlen_attention_triton(q, k, v, cu, frames)
            weights = torch.randn_like(ours)
            grads = torch.autograd.grad(ours, (q, k, v), weights)
            reference, *reference_grads = _reference_with_gradients(q, k, v, cu, frames, weights)
            errors = {"out": (ours.float() - reference).abs().max().item()}
            errors.update({f"d{n}": (a.float() - b).abs().max().item()
                           for n, a, b in zip("qkv", grads, reference_grads)})
            tolerance = selfcheck.TOLERANCE[dtype]
            name = f"{resolution}_{str(dtype).removeprefix('torch.')}"
            out[name] = {"tokens": int(cu[-1]), "max_abs_error": {k_: round(e, 6) for k_, e in errors.items()},
                         "tolerance": tolerance, "gradient_tolerance": tolerance * selfcheck.GRADIENT_FACTOR,
                         "passed": errors["out"] <= tolerance and all(
                             errors[f"d{n}"] <= tolerance * selfcheck.GRADIENT_FACTOR for n in "qkv")}
            del q, k, v, ours, grads, reference, reference_grads
            torch.cuda.empty_cache()
    return out


def _flex(q, k, v, cu, frames):
    """flex_attention with a block mask of the same sequences and frame-causal rule."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    total = q.shape[0]
    document = torch.repeat_interleave(torch.arange(len(cu) - 1, device=q.device), (cu[1:] - cu[:-1]).long())

    def mask_mod(b, h, q_idx, kv_idx):
        return (document[q_idx] == document[kv_idx]) & (frames[kv_idx] <= frames[q_idx])

    block_mask = create_block_mask(mask_mod, None, None, total, total, device=q.device)
    compiled = torch.compile(flex_attention)

    def run(q, k, v):
        return compiled(*(t.transpose(0, 1)[None] for t in (q, k, v)), block_mask=block_mask)[0].transpose(0, 1)
    return run


def attention_speed(args) -> dict:
    from pyramid_core.attention import chooser, disk_cache, varlen_attention
    from pyramid_core.attention.triton_varlen import varlen_attention_triton

    out = {}
    for resolution in RESOLUTIONS:
        q, k, v, cu, frames = attention_inputs(resolution, torch.bfloat16, "cuda")
        candidates = {
            "ours": lambda q, k, v: varlen_attention_triton(q, k, v, cu, frames),
            "sdpa_masked": lambda q, k, v: _reference(q, k, v, cu, frames),
            "sdpa_block_causal": lambda q, k, v: varlen_attention(q, k, v, cu, frame_ids=frames, backend="sdpa"),
            # auto: times the backends on its first call of each kind, then runs the winner
            "auto": lambda q, k, v: varlen_attention(q, k, v, cu, frame_ids=frames),
        }
        try:
            candidates["flex_block_mask"] = _flex(q, k, v, cu, frames)
        except Exception as err:  # noqa: BLE001 -- an older torch
            out[f"{resolution}_flex_error"] = repr(err)
        try:
            from flash_attn import flash_attn_varlen_func

            longest = int((cu[1:] - cu[:-1]).max())
            candidates["flash_attn_no_mask"] = lambda q, k, v: flash_attn_varlen_func(
                q, k, v, cu, cu, longest, longest)
        except ImportError:
            pass
        for name, run in candidates.items():
            entry = {}
            try:
                torch.cuda.empty_cache()
                _peak_gib(reset=True)
                with torch.no_grad():
                    entry["forward_ms"] = _median_ms(lambda: run(q, k, v))
                entry["forward_peak_gib"] = _peak_gib()
                qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
                _peak_gib(reset=True)
                entry["forward_backward_ms"] = _median_ms(lambda: run(qg, kg, vg).sum().backward(), repeats=5)
                entry["forward_backward_peak_gib"] = _peak_gib()
            except Exception as err:  # noqa: BLE001 -- e.g. masked SDPA out of memory at 768p
                entry["error"] = repr(err)[:500]
            out[f"{resolution}_{name}"] = entry
        out[f"{resolution}_tokens"] = int(cu[-1])
        machine = disk_cache.machine_key(q.device)
        out[f"{resolution}_auto_chose"] = {
            mode: chooser.shared.known(machine, chooser.CallKind.of(q, k, cu, frames, training=mode == "training"))
            for mode in ("inference", "training")}
    return out


def child_env() -> dict[str, str]:
    """The environment of a child process: this one's, with the repository put first on
    PYTHONPATH, ahead of (not instead of) what the caller had there (the GPU image brings
    diffusers and av through PYTHONPATH)."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), path) if p)}


def _full_dit():
    from pyramid_core.models import PyramidFluxTransformer

    config = json.loads((ROOT / "tests" / "data" / "manifests" / "PyramidFluxTransformer.json").read_text())
    with torch.device("cuda"):
        model = PyramidFluxTransformer.from_config(config["released_config"])
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def random_text(dit, device="cuda"):
    """Seeded random prompt embeddings (positive, negative) of the sizes ``dit`` takes (T5 4096
    and CLIP 768 wide for the released DiTs), TEXT_TOKENS long with VALID_TEXT real tokens."""
    from pyramid_core.models.text_encoders import PromptEmbeddings
    from pyramid_core.sampling import TextConditioning

    t5, clip = dit.config.joint_attention_dim, dit.config.pooled_projection_dim

    def one(seed):
        g = torch.Generator(device=device).manual_seed(seed)
        mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.int64, device=device)
        mask[:, :VALID_TEXT] = 1
        return PromptEmbeddings(torch.randn(1, TEXT_TOKENS, t5, generator=g, device=device, dtype=torch.bfloat16),
                                mask, torch.randn(1, clip, generator=g, device=device, dtype=torch.bfloat16))

    return TextConditioning(one(1), one(2))


def _t2v(dit, resolution: str, attention: str, deadline: float) -> dict:
    """One text-to-video run, timed unit by unit; stops (recording how far it got) at the deadline."""
    from pyramid_core.attention import default_backend
    from pyramid_core.sampling import text_to_video

    width, height, frames = RESOLUTIONS[resolution]
    units, marks = [], {"start": time.perf_counter(), "unit": 0}

    def callback(info):
        if info.unit_index != marks["unit"]:
            _sync()
            now = time.perf_counter()
            units.append(round(now - marks["start"], 3))
            marks.update(start=now, unit=info.unit_index)
        if time.perf_counter() > deadline:
            raise OutOfTime

    _peak_gib(reset=True)
    started = time.perf_counter()
    complete = True
    try:
        with default_backend(attention):
            text_to_video(dit, random_text(dit), width=width, height=height, num_frames=1 + 8 * (frames - 1),
                          steps=[20, 20, 20], video_steps=[10, 10, 10], generator=torch.Generator().manual_seed(0),
                          callback=callback)
        _sync()
        units.append(round(time.perf_counter() - marks["start"], 3))
    except OutOfTime:
        complete = False
    return {"attention": attention, "complete": complete, "units_done": len(units), "units_in_video": frames,
            "seconds_per_unit": units, "seconds": round(time.perf_counter() - started, 2),
            "peak_gib": _peak_gib()}


def t2v_run(resolution: str, attentions: tuple[str, ...]):
    def section(args, deadline):
        dit = _full_dit()
        out = {}
        for attention in attentions:
            share = deadline if attention == attentions[-1] else time.perf_counter() + (deadline - time.perf_counter()) / 2
            out[attention] = _t2v(dit, resolution, attention, share)
        return out
    return section


def vae_decode(args, deadline) -> dict:
    from pyramid_core.models.vae import CausalVideoVAE

    config = json.loads((ROOT / "tests" / "data" / "manifests" / "CausalVideoVAE.json").read_text())
    with torch.device("cuda"):
        vae = CausalVideoVAE.from_config(config["released_config"])
    vae = vae.to(torch.bfloat16).eval().requires_grad_(False)
    out = {}
    for resolution in RESOLUTIONS:
        width, height, _ = RESOLUTIONS[resolution]
        latents = torch.randn(1, 16, 16, height // 8, width // 8, device="cuda", dtype=torch.bfloat16)
        done = {"chunks": 0}

        def progress(count, total):
            done["chunks"], done["total"] = count, total
            if time.perf_counter() > deadline:
                raise OutOfTime

        torch.cuda.empty_cache()
        _peak_gib(reset=True)
        start = time.perf_counter()
        try:
            with torch.no_grad():
                vae.decode(latents, chunk_size=1, progress=progress)
            _sync()
            complete = True
        except OutOfTime:
            complete = False
        out[resolution] = {"frames": 121, "complete": complete, "chunks_done": done["chunks"],
                           "seconds": round(time.perf_counter() - start, 2), "peak_gib": _peak_gib()}
    return out


LOAD_SNIPPET = """
import json, resource, sys, torch
from pyramid_core.loading import load_dit
torch.cuda.reset_peak_memory_stats()
model = load_dit(sys.argv[1], dtype="bf16", weight_dtype=None if sys.argv[2] == "bf16" else sys.argv[2], device="cuda")
torch.cuda.synchronize()
print(json.dumps({"host_peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                  "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}))
"""


def model_load(args, deadline) -> dict:
    from safetensors.torch import save_file

    out = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pyramid_flow_miniflux_384p.safetensors"
        dit = _full_dit()
        save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(path))
        del dit
        torch.cuda.empty_cache()
        for storage in ("bf16", "fp8_e4m3fn"):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", LOAD_SNIPPET, str(path), storage], cwd=ROOT,
                                  capture_output=True, text=True, env=child_env(),
                                  timeout=max(30, deadline - time.perf_counter()))
            entry = {"seconds": round(time.perf_counter() - started, 2)}
            if done.returncode == 0:
                entry.update(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                entry["error"] = done.stderr[-1500:]
            out[storage] = entry
    return out


# Latent (frames, height, width) of the clips a training step sees: 5 s at 384p and 768p.
TRAIN_LATENTS = {"384p": (16, 48, 80), "768p": (16, 96, 160)}
TRAIN_STEPS = 2          # timed steps per setting, after one untimed (compile, autotune, auto's timing)


def _timed_steps(step, steps: int, device: torch.device, deadline: float) -> dict:
    """``step(i)`` once untimed, then ``steps`` times: mean seconds per step and peak memory."""
    cuda = device.type == "cuda"
    step(0)
    if cuda:
        torch.cuda.synchronize()
        _peak_gib(reset=True)
    start, done = time.perf_counter(), 0
    for i in range(1, steps + 1):
        if time.perf_counter() > deadline:
            break
        step(i)
        done += 1
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / max(done, 1)
    return {"steps": done, "seconds_per_step": round(seconds, 3), "peak_gib": _peak_gib() if cuda else None}


def dit_training_step(dit, shape, attention: str, device: torch.device, deadline: float, steps=TRAIN_STEPS) -> dict:
    """One pyramid flow-matching step of the released recipe (stage columns 1, 2, 1, temporal
    pyramid; bf16 autocast over fp32 weights, AdamW, gradient checkpointing) on 4 random clips
    of latent ``shape`` (frames, height, width)."""
    from pyramid_core.attention import default_backend
    from pyramid_core.scheduling import PyramidFlowScheduler
    from pyramid_core.training.dit_objective import (PyramidObjective, TextBatch, build_training_batch,
                                                     flow_matching_loss)

    frames, height, width = shape
    g = torch.Generator().manual_seed(0)
    batch = 4                               # one clip per stage column (1, 2, 1), as the recipe per GPU
    latents = torch.randn(batch, 16, frames, height, width, generator=g).to(device)
    text = TextBatch(torch.randn(batch, TEXT_TOKENS, dit.config.joint_attention_dim, generator=g),
                     (torch.arange(TEXT_TOKENS) < VALID_TEXT).long()[None].repeat(batch, 1),
                     torch.randn(batch, dit.config.pooled_projection_dim, generator=g)).to(device)
    objective = PyramidObjective(sample_ratios=(1, 2, 1), temporal_pyramid=True, max_latent_frames=frames,
                                 cfg_rate=0.0)
    scheduler, generator = PyramidFlowScheduler(), torch.Generator(device).manual_seed(0)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-5)

    def step(i: int) -> None:
        batch = build_training_batch(latents, text, objective, scheduler, generator=generator, step=i)
        with torch.autocast(device.type, dtype=torch.bfloat16), default_backend(attention):
            loss = flow_matching_loss(dit(**batch.dit_kwargs()), batch.targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"attention": attention, **_timed_steps(step, steps, device, deadline)}


def vae_training_step(vae, frames: int, size: int, device: torch.device, deadline: float, steps=TRAIN_STEPS) -> dict:
    """One VAE reconstruction step (encode, sample, decode, L1 + KL, AdamW; bf16 autocast over
    fp32 weights, gradient checkpointing) on a random ``frames`` x ``size``² clip."""
    video = torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-5)

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            posterior, recon = vae(video)
            loss = (recon.float() - video).abs().mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"clip": [frames, size, size], **_timed_steps(step, steps, device, deadline)}


def training(args, deadline) -> dict:
    """Issue 26 item 6: DiT training steps at 384p and 768p per attention backend, and a VAE step."""
    from pyramid_core.models import PyramidFluxTransformer
    from pyramid_core.models.vae import CausalVideoVAE

    device = torch.device("cuda")
    manifests = ROOT / "tests" / "data" / "manifests"
    with device:
        dit = PyramidFluxTransformer.from_config(
            json.loads((manifests / "PyramidFluxTransformer.json").read_text())["released_config"])
    dit.train().enable_gradient_checkpointing()
    out = {}
    for resolution, shape in TRAIN_LATENTS.items():
        for attention in ("auto", "triton", "sdpa"):
            if deadline - time.perf_counter() < 20:
                out[f"{resolution}_{attention}"] = {"skipped": "budget spent"}
                continue
            torch.cuda.empty_cache()
            try:
                out[f"{resolution}_{attention}"] = dit_training_step(dit, shape, attention, device, deadline)
            except torch.OutOfMemoryError as err:
                out[f"{resolution}_{attention}"] = {"error": repr(err)[:300]}
    del dit
    torch.cuda.empty_cache()
    with device:
        vae = CausalVideoVAE.from_config(json.loads((manifests / "CausalVideoVAE.json").read_text())["released_config"])
    vae.train().enable_gradient_checkpointing()
    out["vae_17x256"] = vae_training_step(vae, 17, 256, device, deadline)
    return out


# (label, weights, block swap share, cap GiB): the settings issue 25 asks to prove, most telling first.
CAP_RUNS = (("bf16", "bf16", 0.0, None), ("bf16", "bf16", 0.0, 12), ("fp8+swap", "fp8_e4m3fn", 0.5, 8),
            ("fp8", "fp8_e4m3fn", 0.0, None), ("fp8", "fp8_e4m3fn", 0.0, 8), ("bf16", "bf16", 0.0, 24),
            ("fp8", "fp8_e4m3fn", 0.0, 12))


def memory_caps(args, deadline) -> dict:
    from safetensors.torch import save_file

    from pyramid_core.models.block_swap import transformer_blocks

    out = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pyramid_flow_miniflux_768p.safetensors"
        dit = _full_dit()
        blocks = len(transformer_blocks(dit))
        save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(path))
        del dit
        torch.cuda.empty_cache()
        for label, weights, share, cap in CAP_RUNS:
            left = deadline - time.perf_counter()
            name = f"{label}@{cap or 'uncapped'}"
            if left < 40:
                out[name] = {"skipped": "budget spent"}
                continue
            command = [sys.executable, str(ROOT / "benchmarks" / "video_under_cap.py"), str(path), "--weights", weights,
                       "--block-swap", str(int(blocks * share))]
            if cap:
                command += ["--cap-gib", str(cap)]
            try:
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=left,
                                      env=child_env())
            except subprocess.TimeoutExpired:
                out[name] = {"error": "budget spent while running"}
                continue
            lines = done.stdout.strip().splitlines()
            out[name] = json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": done.stderr[-1500:]}
    for name, run in out.items():           # time against the uncapped run with the same weights
        base = out.get(f"{name.split('@')[0].replace('+swap', '')}@uncapped", {})
        if run.get("complete") and base.get("complete"):
            total = lambda r: sum(p["seconds"] for k, p in r["phase"].items() if k != "load")  # noqa: E731
            run["time_vs_uncapped"] = round(total(run) / total(base), 3)
    return out


RUNNERS = {
    "environment": lambda args, deadline: environment(args),
    "kernel_correctness": lambda args, deadline: kernel_correctness(args),
    "attention_speed": lambda args, deadline: attention_speed(args),
    "t2v_384p": t2v_run("384p", ("auto", "triton", "sdpa")),
    "vae_decode": vae_decode,
    "model_load": model_load,
    "memory_caps": memory_caps,
    "training": training,
    "t2v_768p": t2v_run("768p", ("auto", "triton", "sdpa")),
}
# The least time a section needs to be worth starting (seconds).
MINIMUM = {"environment": 0, "kernel_correctness": 20, "attention_speed": 30, "t2v_384p": 60, "vae_decode": 30,
           "model_load": 45, "memory_caps": 90, "training": 60, "t2v_768p": 30}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder of the JSON file")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for the whole run (default 330)")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    args = parser.parse_args(argv)
    if not args.budget > 0:
        parser.error("--budget must be positive")
    return args


def report_path(out: Path, gpu: str, created: dt.datetime) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "gpu"
    return out / f"gpu_check_{slug}_{created:%Y-%m-%d}.json"


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch %s); nothing measured" % torch.__version__)
        return 0
    start = time.perf_counter()
    deadline = start + args.budget
    created = dt.datetime.now(dt.timezone.utc)
    report = {"schema": SCHEMA, "created": created.isoformat(timespec="seconds"), "budget_seconds": args.budget,
              "sections": {}}
    path = report_path(args.out, torch.cuda.get_device_name(0), created)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in SECTIONS:
        if name in args.skip:
            report["sections"][name] = {"skipped": "--skip"}
        elif deadline - time.perf_counter() < MINIMUM[name]:
            report["sections"][name] = {"skipped": f"less than {MINIMUM[name]} s of the budget left"}
        else:
            began = time.perf_counter()
            try:
                result = RUNNERS[name](args, deadline)
                report["sections"][name] = {"seconds": round(time.perf_counter() - began, 2), **result}
            except Exception as err:  # noqa: BLE001 -- record it, go on with the next section
                report["sections"][name] = {"seconds": round(time.perf_counter() - began, 2), "error": repr(err)[:2000]}
            torch.cuda.empty_cache()
        report["total_seconds"] = round(time.perf_counter() - start, 2)
        validate_report(report)
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"gpu_check: {name}: {json.dumps(report['sections'][name])[:400]}", flush=True)
    print(f"gpu_check: wrote {path} in {report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
