"""Pyramid sampling: cost against single-stage sampling, and end-to-end sampling time.

(a) ``pyramid_vs_single_stage``: the same DiT and the same total number of DiT calls per
    unit, once with the 3-stage spatial pyramid and temporal pyramid history, once as a
    single stage at full resolution with full-resolution history (what the model would
    cost without the pyramids). Goal: ratio <= 0.45.
(c) ``e2e``: text-to-video end to end (prompt embeddings given, latents out, plus the VAE
    decode separately) with the tiny golden models and with a medium miniFLUX (4 + 4 blocks,
    8 x 64 heads): where the time goes, on this machine. The comparison with the reference
    implementation runs side by side in benchmarks/vs_reference.py.

Prints one JSON line per measurement. Timings are the minimum over ``--repeats`` runs; (a)
alternates its two sides.

    python benchmarks/pyramid_sampling.py [--threads 2] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyramid_core.latents import decode_from_latents  # noqa: E402
from pyramid_core.models import PyramidDiffusionMMDiT, PyramidFluxTransformer  # noqa: E402
from pyramid_core.models.text_encoders import PromptEmbeddings  # noqa: E402
from pyramid_core.sampling import TextConditioning, text_to_video  # noqa: E402
from pyramid_core.scheduling import PyramidFlowScheduler  # noqa: E402

GOLDEN = REPO / "tests" / "data" / "golden"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, repeats: int, device: torch.device) -> float:
    fn()                                     # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def alternating_best(first, second, repeats: int, device: torch.device) -> tuple[float, float]:
    """Minimum seconds of ``first`` and ``second``, run alternately (so a busy spell of the
    machine hits both alike)."""
    first(), second()                        # warm-up
    times = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def text_for(dit, length: int, device) -> TextConditioning:
    g = torch.Generator().manual_seed(0)
    width, pooled = dit.config.joint_attention_dim, dit.config.pooled_projection_dim

    def one():
        mask = torch.ones(1, length, dtype=torch.int64)
        return PromptEmbeddings(torch.randn(1, length, width, generator=g).to(device), mask.to(device),
                                torch.randn(1, pooled, generator=g).to(device))

    return TextConditioning(one(), one())


def golden_dit(family: str, device) -> torch.nn.Module:
    from safetensors.torch import load_file

    config = json.loads((GOLDEN / f"config_{family}_tiny.json").read_text())
    cls = PyramidFluxTransformer if family == "flux" else PyramidDiffusionMMDiT
    model = cls.from_config(config)
    model.load_state_dict(load_file(GOLDEN / f"weights_{family}_tiny.safetensors"), strict=True)
    return model.eval().requires_grad_(False).to(device)


def golden_vae(device):
    from safetensors.torch import load_file

    from pyramid_core.models import CausalVideoVAE

    vae = CausalVideoVAE.from_config(json.loads((GOLDEN / "config_vae_tiny.json").read_text()))
    vae.load_state_dict(load_file(GOLDEN / "weights_vae_tiny.safetensors"), strict=True)
    return vae.eval().requires_grad_(False).to(device)


def medium_flux(device, layers: int = 4, single: int = 4, heads: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    model = PyramidFluxTransformer(num_layers=layers, num_single_layers=single, attention_head_dim=64,
                                   num_attention_heads=heads, joint_attention_dim=256, pooled_projection_dim=64)
    return model.eval().requires_grad_(False).to(device)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


# --------------------------------------------------------------------------------------
# (a) pyramid vs single stage
# --------------------------------------------------------------------------------------

def bench_pyramid_vs_single(args, device) -> None:
    dit = medium_flux(device, layers=2, single=2, heads=4)
    text = text_for(dit, args.text_len, device)
    width, height, frames = args.width, args.height, args.frames
    steps = args.stage_steps
    single = PyramidFlowScheduler(stage_range=(0.0, 1.0))

    def run(scheduler, stage_steps):
        return text_to_video(dit, text, width=width, height=height, num_frames=frames, steps=stage_steps,
                             video_steps=stage_steps, guidance_scale=7.0, video_guidance_scale=5.0,
                             scheduler=scheduler, generator=torch.Generator().manual_seed(0))

    pyramid_s, single_s = alternating_best(lambda: run(PyramidFlowScheduler(), [steps] * 3),
                                           lambda: run(single, [3 * steps]), args.repeats, device)
    emit(dict(benchmark="pyramid_vs_single_stage", device=str(device), threads=torch.get_num_threads(),
              model=f"miniFLUX 2+2 blocks, 4x64 heads ({sum(p.numel() for p in dit.parameters()) / 1e6:.1f} M)",
              size=f"{width}x{height}", frames=frames, dit_calls_per_unit=3 * steps, text_tokens=args.text_len,
              pyramid_s=round(pyramid_s, 4), single_stage_s=round(single_s, 4),
              ratio=round(pyramid_s / single_s, 3), goal_ratio=0.45))


# --------------------------------------------------------------------------------------
# (c) end to end
# --------------------------------------------------------------------------------------

def bench_e2e(args, device) -> None:
    vae = golden_vae(device)
    cases = [("tiny", family, golden_dit(family, device), 128, 64) for family in ("flux", "mmdit")]
    cases.append(("medium", "flux", medium_flux(device), 256, 128))
    for size, family, dit, width, height in cases:
        text = text_for(dit, 8 if size == "tiny" else args.text_len, device)
        variant = "miniflux-384p" if family == "flux" else "sd3-768p"

        def sample():
            return text_to_video(dit, text, width=width, height=height, num_frames=17, steps=[2, 2, 2],
                                 video_steps=[2, 2, 2], guidance_scale=7.0, video_guidance_scale=5.0,
                                 variant=variant, generator=torch.Generator().manual_seed(0))

        sample_s = best_time(sample, args.repeats, device)
        latents = sample()
        decode_s = best_time(lambda: decode_from_latents(vae, latents, variant, chunk_size=1), args.repeats, device)
        record = dict(benchmark="e2e_t2v", case=f"{size} {family}", device=str(device),
                      threads=torch.get_num_threads(), size=f"{width}x{height}", frames=17, steps=[2, 2, 2],
                      params_m=round(sum(p.numel() for p in dit.parameters()) / 1e6, 2),
                      sample_s=round(sample_s, 4), tiny_vae_decode_s=round(decode_s, 4))
        emit(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--frames", type=int, default=25, help="pixel frames of the (a) video, 1 + 8k")
    parser.add_argument("--stage-steps", type=int, default=3, help="(a) steps per stage; single stage gets 3x")
    parser.add_argument("--text-len", type=int, default=128)
    parser.add_argument("--only", choices=("a", "c"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with torch.inference_mode():
        if args.only in (None, "a"):
            bench_pyramid_vs_single(args, device)
        if args.only in (None, "c"):
            bench_e2e(args, device)


if __name__ == "__main__":
    main()
