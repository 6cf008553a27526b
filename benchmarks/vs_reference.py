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

def alternate(ours, theirs, rounds: int) -> tuple[float, float]:
    """Median seconds of ``ours()`` and ``theirs()`` run alternately ``rounds`` times each."""
    times = {"ours": [], "theirs": []}
    for _ in range(rounds):
        for name, fn in (("theirs", theirs), ("ours", ours)):
            start = time.perf_counter()
            fn()
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
    return model


def reference_dit(RefFlux, ours):
    ref = RefFlux(**{k: v for k, v in dict(ours.config).items() if not k.startswith("_")},
                  use_flash_attn=False).eval().requires_grad_(False)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref


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

def case_dit_forward(ref_modules, rounds: int) -> None:
    """One forward of the medium DiT at the 384p top stage with history (1,260 image tokens),
    a CFG pair with realistic T5 masks."""
    import torch

    from dit_forward import CASES, make_inputs

    _, RefFlux, _ = ref_modules
    ours = random_dit(MEDIUM)
    theirs = reference_dit(RefFlux, ours)
    inputs = make_inputs(CASES["1260-tokens-384p-top-stage-with-history"], torch.device("cpu"), torch.float32,
                         ours.config)
    mask = torch.zeros_like(inputs["encoder_attention_mask"])
    mask[0, :NEGATIVE_TOKENS], mask[1, :PROMPT_TOKENS] = 1, 1
    inputs["encoder_attention_mask"] = mask
    with torch.no_grad():
        a, b = ours(**inputs)[0], theirs(**inputs)[0]
        ours_s, theirs_s = alternate(lambda: ours(**inputs), lambda: theirs(**inputs), rounds)
    emit("dit-forward-medium-384p-top-stage", ours_s, theirs_s, (a - b).abs().max().item(), b.abs().max().item())


class _ServedNoise:
    """The reference pipeline's random draws, served from our generator in our order."""

    def __init__(self, seed: int, gamma: float):
        import torch

        self.generator = torch.Generator().manual_seed(seed)
        self.gamma = gamma

    def initial(self, shape):
        from pyramid_core.rng import standard_normal

        return standard_normal(shape, generator=self.generator)

    def block(self, bs, ch, temp, height, width):
        from pyramid_core.noise import block_noise

        return block_noise((bs, ch, temp, height, width), self.gamma, generator=self.generator)


def case_t2v(ref_modules, rounds: int, size: str, latent_frames: int, work: Path) -> None:
    """Text-to-video through both pipelines: steps 2,2,2 everywhere, guidance 7 / 5."""
    import torch

    from pyramid_core.sampling import TextConditioning, text_to_video

    pyramid_dit, RefFlux, _ = ref_modules
    if size == "tiny":
        config = dict(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=64)
        width, height = 128, 64
    else:
        config, width, height = MEDIUM, 640, 384
    ours = random_dit(config)
    pipeline = _reference_pipeline(pyramid_dit, work)
    pipeline.dit = reference_dit(RefFlux, ours)
    positive = prompt_embeddings(TEXT_WIDTH, POOLED_WIDTH, PROMPT_TOKENS, 1)
    negative = prompt_embeddings(TEXT_WIDTH, POOLED_WIDTH, NEGATIVE_TOKENS, 2)
    text = TextConditioning(positive, negative)
    frames = 1 + 8 * (latent_frames - 1)
    steps = [2, 2, 2]

    def run_ours():
        return text_to_video(ours, text, width=width, height=height, num_frames=frames, steps=steps,
                             video_steps=steps, guidance_scale=7.0, video_guidance_scale=5.0,
                             generator=torch.Generator().manual_seed(0))

    def run_theirs():
        served = _ServedNoise(0, pipeline.scheduler.config.gamma)
        pipeline.prepare_latents = lambda b, c, t, h, w, dtype, device, generator: served.initial(
            (b, c, int(t), int(h) // 8, int(w) // 8))
        pipeline.sample_block_noise = served.block
        texts = iter([tuple(positive), tuple(negative)])
        pipeline.text_encoder = lambda prompts, device: next(texts)
        return pipeline.generate(prompt="x", height=height, width=width, temp=latent_frames,
                                 num_inference_steps=steps, video_num_inference_steps=steps, guidance_scale=7.0,
                                 video_guidance_scale=5.0, output_type="latent", save_memory=True)

    with torch.no_grad():
        a, b = run_ours(), run_theirs()
        ours_s, theirs_s = alternate(run_ours, run_theirs, rounds)
    emit(f"t2v-{size}-{width}x{height}-{latent_frames}-latent-frames", ours_s, theirs_s,
         (a - b.float()).abs().max().item(), b.abs().max().item())


def _reference_pipeline(pyramid_dit, work: Path):
    """The reference's pipeline object, built from a throwaway folder (a 1-block DiT it is
    told to load, the tiny golden VAE; no text encoders: the cases serve embeddings)."""
    import shutil

    import torch

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
    if tile is not None:
        theirs.enable_tiling()
    g = torch.Generator().manual_seed(1)
    if what == "decode":
        latents = torch.randn(1, 16, 1 + (frames - 1) // 8, size // 8, size // 8, generator=g)

        def run_ours():
            return ours.decode(latents, chunk_size=chunk, tile_size=tile)

        def run_theirs():
            return theirs.decode(latents.clone(), temporal_chunk=True, window_size=chunk,
                                 tile_sample_min_size=tile or size).sample
    else:
        video = torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1

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
                start = time.perf_counter()
                out, mib, exact = peak_above(fn)
                times[name].append(time.perf_counter() - start)
                peaks[name].append(mib)
                if name == "ours":
                    a = out
                else:
                    b = out
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["theirs"])
    ours_mib, theirs_mib = max(peaks["ours"]), max(peaks["theirs"])
    name = f"vae-{what}-{size}px-{frames}-frames-{'chunk-' + str(chunk) if chunk else 'whole'}" + (
        f"-tiles-{tile}" if tile else "")
    emit(name, ours_s, theirs_s, (a - b).abs().max().item(), b.abs().max().item(),
         ours_peak_mib=round(ours_mib, 1), reference_peak_mib=round(theirs_mib, 1),
         peak_ratio=round(ours_mib / theirs_mib, 3) if theirs_mib > 0 else None, peak_exact=exact)


CASES = {
    "dit-forward": lambda mods, rounds, work: case_dit_forward(mods, rounds),
    "t2v-tiny": lambda mods, rounds, work: case_t2v(mods, rounds, "tiny", 3, work),
    "t2v-medium-2": lambda mods, rounds, work: case_t2v(mods, rounds, "medium", 2, work),
    "t2v-medium-4": lambda mods, rounds, work: case_t2v(mods, rounds, "medium", 4, work),
    "vae-decode-256": lambda mods, rounds, work: case_vae(mods, rounds, "decode", 256, 17, 1, None),
    "vae-decode-256-tiled": lambda mods, rounds, work: case_vae(mods, rounds, "decode", 256, 17, 1, 128),
    "vae-decode-128": lambda mods, rounds, work: case_vae(mods, rounds, "decode", 128, 17, 1, None),
    "vae-encode-256": lambda mods, rounds, work: case_vae(mods, rounds, "encode", 256, 17, 0, None),
    "vae-encode-256-chunks": lambda mods, rounds, work: case_vae(mods, rounds, "encode", 256, 17, 8, None),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="a checkout of jy0205/Pyramid-Flow (see the module docstring)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (the VAE cases take minutes each)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
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
