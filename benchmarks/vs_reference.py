"""Ours against the reference implementation (jy0205/Pyramid-Flow), side by side in one process.

Both sides get the same random weights (ours are built, their state dicts loaded into the
reference's classes), the same inputs and, for sampling, the same noise (the reference's
initial-noise and block-noise draws are served from our generator, which is how its outputs
can be compared). Every case first checks that the two outputs agree, then times them in
alternating runs and reports medians; the VAE cases also report the peak resident memory
of each call above what the process held before it (benchmarks/memory.py). One JSON line
per case: both times, the ratio (reference / ours: above 1 means we are faster), both peaks
and the largest difference.

The reference runs in its own environment, which has everything ours needs too::

    bash ../shared/tools/reference_env/setup.sh GIT_DIR /tmp/refenv /tmp/ref/pf   # GIT_DIR: a clone of
    #   https://github.com/jy0205/Pyramid-Flow (about 2 minutes: a CPU venv with its pinned versions)
    PYTHONPATH=. /tmp/refenv/bin/python benchmarks/vs_reference.py --reference /tmp/ref/pf

The reference is imported from ``--reference`` at run time; none of it is copied here.
Without ``--reference`` the script says how to get one and exits 0.

    python benchmarks/vs_reference.py --reference PATH [--cases ...] [--rounds 3] [--threads 2]

On a GPU (``--device cuda``, bf16 by default) both run on the device, the reference under
the bf16 autocast its README uses, its DiT with ``use_flash_attn=False`` (SDPA with a dense
mask) unless flash-attn is installed; the cases default to the released miniFLUX at full
size: a DiT forward at the 384p and 768p top stage, and a whole 5 s 384p text-to-video with
the README's steps (20, 20, 20 / 10, 10, 10), with our seconds per unit. Peaks are the
device's peak allocated memory per call. The reference imports on a current stack
(diffusers 0.42, transformers 5): its package ``__init__`` files import IPython and
tensorboardX for debugging only, and where those are missing empty stand-ins are put in
``sys.modules``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MEDIUM = dict(num_layers=4, num_single_layers=4, num_attention_heads=8, attention_head_dim=64)
TEXT_WIDTH, POOLED_WIDTH = 4096, 768
PROMPT_TOKENS, NEGATIVE_TOKENS = 30, 24          # valid T5 tokens of the prompt and the negative prompt, of 128


def _stand_in_for_debug_modules() -> None:
    """Empty ``IPython`` / ``tensorboardX`` modules where they are not installed: the reference
    imports ``IPython.embed`` and ``tensorboardX.SummaryWriter`` at package import and uses
    neither on the paths run here. They carry a ``__spec__`` (accelerate probes
    ``find_spec("tensorboardX")``) and hand out a do-nothing stand-in for any name."""
    import importlib.machinery
    import importlib.util
    import types

    class Nothing:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            return None

        def __getattr__(self, name):
            return Nothing()

    for name in ("IPython", "tensorboardX"):
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.__getattr__ = lambda attr: Nothing
        sys.modules[name] = module


def import_reference(path: str):
    """Put the checkout on sys.path and import what the cases use. The reference imports
    torchvision, whose wheel for the CPU torch ships a CUDA-linked extension that cannot
    register its operators: those registrations are skipped (only torchvision's Python parts
    are used)."""
    import torch.library

    original = torch.library.register_fake

    def tolerant(op, *args, **kwargs):
        try:
            registered = original(op, *args, **kwargs)
        except RuntimeError:
            return (args[0] if args else kwargs.get("func")) if (args or "func" in kwargs) else (lambda fn: fn)
        if args or "func" in kwargs:
            return registered

        def decorate(fn):
            try:
                return registered(fn)
            except RuntimeError:
                return fn
        return decorate

    _stand_in_for_debug_modules()
    torch.library.register_fake = tolerant
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchvision  # noqa: F401
    finally:
        torch.library.register_fake = original
    sys.path.insert(0, str(Path(path).resolve()))
    import pyramid_dit
    from pyramid_dit.flux_modules import PyramidFluxTransformer
    from video_vae import CausalVideoVAE

    return pyramid_dit, PyramidFluxTransformer, CausalVideoVAE


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------

class Target:
    """Where both sides run (``--device``, ``--dtype``); CPU fp32 unless told otherwise."""

    device = "cpu"
    dtype = "fp32"

    @classmethod
    def torch_dtype(cls):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cls.dtype]

    @classmethod
    def cuda(cls) -> bool:
        return cls.device.startswith("cuda")


def sync() -> None:
    if Target.cuda():
        import torch

        torch.cuda.synchronize()


def reference_precision():
    """The autocast the reference's README runs its pipeline under (none in fp32)."""
    import torch

    if Target.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(Target.device.split(":")[0], dtype=Target.torch_dtype())


def timed_peak(fn):
    """``(fn(), seconds, peak GiB allocated on the GPU during it or None on the CPU)``."""
    import torch

    if Target.cuda():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    sync()
    seconds = time.perf_counter() - start
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if Target.cuda() else None
    return out, seconds, peak


def alternate(ours, theirs, rounds: int) -> tuple[float, float]:
    """Median seconds of ``ours()`` and ``theirs()`` run alternately ``rounds`` times each."""
    times = {"ours": [], "theirs": []}
    for _ in range(rounds):
        for name, fn in (("theirs", theirs), ("ours", ours)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["ours"]), statistics.median(times["theirs"])


def emit(case: str, ours_s: float, theirs_s: float, difference: float, scale: float, **extra) -> None:
    print(json.dumps({"case": case, "ours_s": round(ours_s, 4), "reference_s": round(theirs_s, 4),
                      "ratio": round(theirs_s / ours_s, 3), "max_difference": difference,
                      "output_scale": scale, **extra}), flush=True)


# --------------------------------------------------------------------------------------
# models and inputs
# --------------------------------------------------------------------------------------

def random_dit(config: dict, seed: int = 0):
    """Our miniFLUX with random weights everywhere (not the adaLN-zero training init)."""
    import torch

    from pyramid_core.models import PyramidFluxTransformer

    torch.manual_seed(seed)
    model = PyramidFluxTransformer(**config).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.to(Target.device, Target.torch_dtype())


def reference_dit(RefFlux, ours):
    import importlib.util

    flash = Target.cuda() and importlib.util.find_spec("flash_attn") is not None
    ref = RefFlux(**{k: v for k, v in dict(ours.config).items() if not k.startswith("_")},
                  use_flash_attn=flash).eval().requires_grad_(False)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref.to(Target.device, Target.torch_dtype())


def prompt_embeddings(width: int, pooled: int, valid: int, seed: int):
    import torch

    from pyramid_core.models.text_encoders import PromptEmbeddings

    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 128, dtype=torch.int64)
    mask[0, :valid] = 1
    return PromptEmbeddings(torch.randn(1, 128, width, generator=g), mask, torch.randn(1, pooled, generator=g))


# --------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------

def released_config() -> dict:
    """The released miniFLUX config (from the checkpoint manifest)."""
    manifest = json.loads((ROOT / "tests" / "data" / "manifests" / "PyramidFluxTransformer.json").read_text())
    return {k: v for k, v in manifest["released_config"].items() if not k.startswith("_")}


def last_unit_inputs(width: int, height: int, latent_frames: int, config) -> dict:
    """DiT inputs of the last unit of a video at the top stage: a CFG pair (negative, positive
    T5 masks), the reference's temporal-pyramid history of the past frames, the noisy frame."""
    import torch

    from pyramid_core.sampling import build_temporal_history

    g = torch.Generator().manual_seed(0)
    device, dtype = Target.device, Target.torch_dtype()
    past = torch.randn(1, 16, latent_frames - 1, height // 8, width // 8, generator=g)
    history = build_temporal_history(past, num_stages=3).clips[2]
    noisy = torch.randn(1, 16, 1, height // 8, width // 8, generator=g)
    sample = [[clip.repeat(2, 1, 1, 1, 1).to(device, dtype) for clip in [*history, noisy]]]
    mask = torch.zeros(2, 128, dtype=torch.int64)
    mask[0, :NEGATIVE_TOKENS], mask[1, :PROMPT_TOKENS] = 1, 1
    return dict(sample=sample,
                encoder_hidden_states=torch.randn(2, 128, config.joint_attention_dim, generator=g).to(device, dtype),
                encoder_attention_mask=mask.to(device),
                pooled_projections=torch.randn(2, config.pooled_projection_dim, generator=g).to(device, dtype),
                timestep_ratio=torch.full((2,), 500.0).to(device, dtype))


def case_dit_forward(ref_modules, rounds: int, size: str = "medium", resolution: str = "384p") -> None:
    """One DiT forward: the medium DiT at the 384p top stage with history (1,260 image
    tokens), or the full-size one at the top stage of a video's last unit (384p: 16 latent
    frames, 768p: 31), a CFG pair with realistic T5 masks."""
    import torch

    from dit_forward import CASES, make_inputs

    _, RefFlux, _ = ref_modules
    ours = random_dit(MEDIUM if size == "medium" else released_config())
    theirs = reference_dit(RefFlux, ours)
    if size == "medium":
        inputs = make_inputs(CASES["1260-tokens-384p-top-stage-with-history"], torch.device(Target.device),
                             Target.torch_dtype(), ours.config)
        mask = torch.zeros_like(inputs["encoder_attention_mask"])
        mask[0, :NEGATIVE_TOKENS], mask[1, :PROMPT_TOKENS] = 1, 1
        inputs["encoder_attention_mask"] = mask
    else:
        width, height, frames = {"384p": (640, 384, 16), "768p": (1280, 768, 31)}[resolution]
        inputs = last_unit_inputs(width, height, frames, ours.config)

    def run_theirs():
        with reference_precision():
            return theirs(**inputs)[0]

    with torch.no_grad():
        a, _, ours_peak = timed_peak(lambda: ours(**inputs)[0])
        b, _, theirs_peak = timed_peak(run_theirs)
        ours_s, theirs_s = alternate(lambda: ours(**inputs), run_theirs, rounds)
    emit(f"dit-forward-{size}-{resolution}-top-stage", ours_s, theirs_s, (a.float() - b.float()).abs().max().item(),
         b.float().abs().max().item(), device=Target.device, dtype=Target.dtype, ours_peak_gib=ours_peak,
         reference_peak_gib=theirs_peak)


class _ServedNoise:
    """The reference pipeline's random draws, served from our generator in our order."""

    def __init__(self, seed: int, gamma: float):
        import torch

        self.generator = torch.Generator().manual_seed(seed)
        self.gamma = gamma

    def initial(self, shape, device="cpu", dtype=None):
        from pyramid_core.rng import standard_normal

        return standard_normal(shape, generator=self.generator).to(device, dtype)

    def block(self, bs, ch, temp, height, width):
        from pyramid_core.noise import block_noise

        return block_noise((bs, ch, temp, height, width), self.gamma, generator=self.generator).to(Target.device)


def case_t2v(ref_modules, rounds: int, size: str, latent_frames: int, work: Path,
             steps=(2, 2, 2), video_steps=(2, 2, 2)) -> None:
    """Text-to-video through both pipelines, guidance 7 / 5; ours also reports seconds per unit."""
    import torch

    from pyramid_core.sampling import TextConditioning, text_to_video

    pyramid_dit, RefFlux, _ = ref_modules
    if size == "tiny":
        config = dict(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=64)
        width, height = 128, 64
    elif size == "medium":
        config, width, height = MEDIUM, 640, 384
    else:
        config, width, height = released_config(), 640, 384
    ours = random_dit(config)
    pipeline = _reference_pipeline(pyramid_dit, work)
    pipeline.dit = reference_dit(RefFlux, ours)
    pipeline.vae.to(Target.device, Target.torch_dtype())
    positive = prompt_embeddings(TEXT_WIDTH, POOLED_WIDTH, PROMPT_TOKENS, 1)
    negative = prompt_embeddings(TEXT_WIDTH, POOLED_WIDTH, NEGATIVE_TOKENS, 2)
    text = TextConditioning(positive, negative)
    frames = 1 + 8 * (latent_frames - 1)
    steps, video_steps = list(steps), list(video_steps)
    units: list[float] = []

    def on_device(embeddings):
        dtype = Target.torch_dtype()
        return tuple(t.to(Target.device, dtype if t.is_floating_point() else None) for t in embeddings)

    def run_ours():
        units.clear()
        marks = {"start": time.perf_counter(), "unit": 0}

        def unit_clock(info):               # a unit's time is read at the next unit's first step
            if info.unit_index != marks["unit"]:
                sync()
                now = time.perf_counter()
                units.append(round(now - marks["start"], 3))
                marks.update(start=now, unit=info.unit_index)

        out = text_to_video(ours, text, width=width, height=height, num_frames=frames, steps=steps,
                            video_steps=video_steps, guidance_scale=7.0, video_guidance_scale=5.0,
                            generator=torch.Generator().manual_seed(0), callback=unit_clock)
        sync()
        units.append(round(time.perf_counter() - marks["start"], 3))
        return out

    def run_theirs():
        served = _ServedNoise(0, pipeline.scheduler.config.gamma)
        pipeline.prepare_latents = lambda b, c, t, h, w, dtype, device, generator: served.initial(
            (b, c, int(t), int(h) // 8, int(w) // 8), device, dtype)
        pipeline.sample_block_noise = served.block
        texts = iter([on_device(positive), on_device(negative)])
        pipeline.text_encoder = lambda prompts, device: next(texts)
        with reference_precision():
            return pipeline.generate(prompt="x", height=height, width=width, temp=latent_frames,
                                     num_inference_steps=steps, video_num_inference_steps=video_steps,
                                     guidance_scale=7.0, video_guidance_scale=5.0, output_type="latent",
                                     save_memory=True)

    with torch.no_grad():
        a, _, ours_peak = timed_peak(run_ours)
        b, _, theirs_peak = timed_peak(run_theirs)
        ours_s, theirs_s = alternate(run_ours, run_theirs, rounds)
    emit(f"t2v-{size}-{width}x{height}-{latent_frames}-latent-frames", ours_s, theirs_s,
         (a.float() - b.float()).abs().max().item(), b.float().abs().max().item(), device=Target.device,
         dtype=Target.dtype, steps=[steps, video_steps], ours_seconds_per_unit=list(units),
         ours_peak_gib=ours_peak, reference_peak_gib=theirs_peak)


def _reference_pipeline(pyramid_dit, work: Path):
    """The reference's pipeline object, built from a throwaway folder (a 1-block DiT it is
    told to load, the tiny golden VAE; no text encoders: the cases serve embeddings)."""
    import shutil

    folder = work / "reference_model"
    if not folder.exists():
        from safetensors.torch import save_file

        dit = random_dit(dict(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=64))
        target = folder / "diffusion_transformer_384p"
        target.mkdir(parents=True)
        config = {k: v for k, v in dict(dit.config).items() if not k.startswith("_")}
        (target / "config.json").write_text(json.dumps({"_class_name": "PyramidFluxTransformer", **config}))
        save_file({k: v.contiguous() for k, v in dit.state_dict().items()},
                  str(target / "diffusion_pytorch_model.safetensors"))
        golden = ROOT / "tests" / "data" / "golden"
        (folder / "causal_video_vae").mkdir()
        shutil.copyfile(golden / "config_vae_tiny.json", folder / "causal_video_vae" / "config.json")
        shutil.copyfile(golden / "weights_vae_tiny.safetensors",
                        folder / "causal_video_vae" / "diffusion_pytorch_model.safetensors")
    with contextlib.redirect_stdout(sys.stderr):
        return pyramid_dit.PyramidDiTForVideoGeneration(
            str(folder), model_dtype="fp32", model_name="pyramid_flux", model_variant="diffusion_transformer_384p",
            load_text_encoder=False)


def case_vae(ref_modules, rounds: int, what: str, size: int, frames: int, chunk: int, tile: int | None) -> None:
    """The full-size causal VAE (random weights): decode (``chunk`` latent frames per window) or
    encode (``chunk`` pixel frames per chunk, 0 = all at once), optionally in tiles."""
    import torch

    from memory import peak_above
    from pyramid_core.models import CausalVideoVAE

    _, _, RefVAE = ref_modules
    torch.manual_seed(0)
    ours = CausalVideoVAE().eval().requires_grad_(False)
    theirs = RefVAE.from_config({k: v for k, v in dict(ours.config).items() if not k.startswith("_")},
                                interpolate=False).eval().requires_grad_(False)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours, theirs = (m.to(Target.device, Target.torch_dtype()) for m in (ours, theirs))
    if tile is not None:
        theirs.enable_tiling()
    g = torch.Generator().manual_seed(1)
    place = dict(device=Target.device, dtype=Target.torch_dtype())
    if what == "decode":
        latents = torch.randn(1, 16, 1 + (frames - 1) // 8, size // 8, size // 8, generator=g).to(**place)

        def run_ours():
            return ours.decode(latents, chunk_size=chunk, tile_size=tile)

        def run_theirs():
            return theirs.decode(latents.clone(), temporal_chunk=True, window_size=chunk,
                                 tile_sample_min_size=tile or size).sample
    else:
        video = (torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1).to(**place)

        def run_ours():
            return ours.encode(video, chunk_size=chunk or None, tile_size=tile).mean

        def run_theirs():
            out = theirs.encode(video, temporal_chunk=bool(chunk), window_size=chunk or 16,
                                tile_sample_min_size=tile or size)
            return out.latent_dist.mean

    peaks, times = {"ours": [], "theirs": []}, {"ours": [], "theirs": []}
    with torch.no_grad():
        for _ in range(rounds):                           # alternating; every run measured for memory too
            for name, fn in (("theirs", run_theirs), ("ours", run_ours)):
                if Target.cuda():                         # the device's peak allocated memory
                    out, seconds, gib = timed_peak(fn)
                    mib, exact = gib * 1024, True
                else:                                     # the process's resident memory
                    start = time.perf_counter()
                    out, mib, exact = peak_above(fn)
                    seconds = time.perf_counter() - start
                times[name].append(seconds)
                peaks[name].append(mib)
                if name == "ours":
                    a = out
                else:
                    b = out
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["theirs"])
    ours_mib, theirs_mib = max(peaks["ours"]), max(peaks["theirs"])
    name = f"vae-{what}-{size}px-{frames}-frames-{'chunk-' + str(chunk) if chunk else 'whole'}" + (
        f"-tiles-{tile}" if tile else "")
    emit(name, ours_s, theirs_s, (a.float() - b.float()).abs().max().item(), b.float().abs().max().item(),
         ours_peak_mib=round(ours_mib, 1), reference_peak_mib=round(theirs_mib, 1),
         peak_ratio=round(ours_mib / theirs_mib, 3) if theirs_mib > 0 else None, peak_exact=exact)


CASES = {
    "dit-forward": lambda mods, rounds, work: case_dit_forward(mods, rounds),
    "dit-forward-full-384p": lambda mods, rounds, work: case_dit_forward(mods, rounds, "full", "384p"),
    "dit-forward-full-768p": lambda mods, rounds, work: case_dit_forward(mods, rounds, "full", "768p"),
    "t2v-full-384p": lambda mods, rounds, work: case_t2v(mods, rounds, "full", 16, work, (20, 20, 20), (10, 10, 10)),
    "t2v-tiny": lambda mods, rounds, work: case_t2v(mods, rounds, "tiny", 3, work),
    "t2v-medium-2": lambda mods, rounds, work: case_t2v(mods, rounds, "medium", 2, work),
    "t2v-medium-4": lambda mods, rounds, work: case_t2v(mods, rounds, "medium", 4, work),
    "vae-decode-256": lambda mods, rounds, work: case_vae(mods, rounds, "decode", 256, 17, 1, None),
    "vae-decode-256-tiled": lambda mods, rounds, work: case_vae(mods, rounds, "decode", 256, 17, 1, 128),
    "vae-decode-128": lambda mods, rounds, work: case_vae(mods, rounds, "decode", 128, 17, 1, None),
    "vae-encode-256": lambda mods, rounds, work: case_vae(mods, rounds, "encode", 256, 17, 0, None),
    "vae-encode-256-chunks": lambda mods, rounds, work: case_vae(mods, rounds, "encode", 256, 17, 8, None),
}


# What runs by default: small cases on the CPU, the released sizes on a GPU.
GPU_CASES = ("dit-forward-full-384p", "dit-forward-full-768p", "t2v-full-384p", "vae-decode-256")
CPU_CASES = tuple(name for name in CASES if "full" not in name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="a checkout of jy0205/Pyramid-Flow (see the module docstring)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES),
                        help=f"default on the CPU: {' '.join(CPU_CASES)}; on a GPU: {' '.join(GPU_CASES)}")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (the VAE cases take minutes each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides run there)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"),
                        help="weights and compute of both sides (default fp32 on the CPU, bf16 on a GPU)")
    args = parser.parse_args(argv)
    Target.device = args.device
    Target.dtype = args.dtype or ("bf16" if Target.cuda() else "fp32")
    args.cases = args.cases or list(GPU_CASES if Target.cuda() else CPU_CASES)
    if not args.reference:
        print(json.dumps({"skipped": True, "reason": "no --reference: build its environment with "
                          "shared/tools/reference_env/setup.sh (see this file's docstring), then pass "
                          "--reference /tmp/ref/pf and run with that environment's python"}))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    modules = import_reference(args.reference)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            CASES[name](modules, args.rounds, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
