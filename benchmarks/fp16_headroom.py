"""fp16 against fp32 on the released block shapes: how close the activations come to fp16's
range, and how far fp16 rounding moves the outputs (random weights, the CPU).

Shapes are the released ones, read from the manifests in ``tests/data/manifests``: the miniFLUX DiT at full width (30 heads x 64, T5 width 4096) with
``--blocks`` double and single blocks on the 384p first frame (960 image + 128 text tokens),
and the full causal VAE decoder on ``--vae-size`` latents. Weights are random N(0, 0.02) for
the DiT (as benchmarks/vs_reference.py), PyTorch's initialisation for the VAE.

fp16 matmuls run ~250x slower than fp32 on this CPU, so low precision is emulated the way a
GPU computes it: weights stored in the low dtype, every leaf module's output (Linear, Conv,
norms, activations) rounded to it -- a value past fp16's 65504 becomes inf, as on the GPU --
and products accumulated in fp32, as tensor cores do. Functional ops between modules (RoPE,
modulation, residual adds) stay fp32, so the emulation errs on the optimistic side.

One JSON line per model: the largest |activation| in fp32 and its module, the headroom
(65504 / that), and per dtype the relative L2 error of the output against fp32 and whether
it stayed finite.

    python benchmarks/fp16_headroom.py [--blocks 2] [--vae-size 2x8x8]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyramid_core.loading import config_from_state_dict  # noqa: E402
from pyramid_core.models import CausalVideoVAE, PyramidFluxTransformer  # noqa: E402
from pyramid_core.models.text_encoders import PromptEmbeddings  # noqa: E402
from pyramid_core.sampling import TextConditioning  # noqa: E402

FP16_MAX = torch.finfo(torch.float16).max


def manifest_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a released checkpoint (the manifest copied into tests/data)."""
    data = json.loads((ROOT / "tests" / "data" / "manifests" / f"{name}.json").read_text())
    return {k: tuple(v) for k, v in data["state_dict"].items()}


def leaf_modules(model: torch.nn.Module):
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def run(model: torch.nn.Module, call, dtype: torch.dtype | None) -> tuple[torch.Tensor, float, str]:
    """``call(model)`` with ``dtype`` emulated (None: plain fp32); returns the output, the largest
    |leaf output| and the module that produced it."""
    hooks, peak = [], {"value": 0.0, "name": ""}
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    if dtype is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(dtype).float())

    def hook(name):
        def round_output(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                return None
            value = output.detach().abs().max().item()
            if value > peak["value"]:
                peak.update(value=value, name=name)
            return output.to(dtype).float() if dtype is not None else None
        return round_output

    for name, module in leaf_modules(model):
        hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            out = call(model)
    finally:
        for h in hooks:
            h.remove()
        model.load_state_dict(saved)
    return out, peak["value"], peak["name"]


def compare(label: str, model: torch.nn.Module, call) -> dict:
    reference, peak, where = run(model, call, None)
    row = {"benchmark": "fp16_headroom", "model": label, "fp32_max_abs_activation": round(peak, 2),
           "at": where, "fp16_headroom": round(FP16_MAX / peak, 2)}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        out, _, _ = run(model, call, dtype)
        finite = bool(torch.isfinite(out).all())
        error = ((out - reference).norm() / reference.norm()).item() if finite else None
        row[f"{name}_finite"], row[f"{name}_relative_error"] = finite, (round(error, 5) if finite else None)
    return row


def dit_row(blocks: int) -> dict:
    config = config_from_state_dict("flux", manifest_shapes("PyramidFluxTransformer"))
    config.update(num_layers=blocks, num_single_layers=blocks)
    torch.manual_seed(0)
    dit = PyramidFluxTransformer(**config).eval().requires_grad_(False)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.02)
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 128, dtype=torch.int64)
    mask[:, :24] = 1
    prompt = PromptEmbeddings(0.3 * torch.randn(1, 128, config["joint_attention_dim"], generator=g), mask,
                              torch.randn(1, config["pooled_projection_dim"], generator=g))
    text = TextConditioning(prompt).model_inputs(1, 0.0, torch.float32, torch.device("cpu"))
    latents = torch.randn(1, 16, 1, 48, 80, generator=g)                    # 384p first frame, top stage
    timestep = torch.full((1,), 0.5)

    def call(model):
        return model(sample=[[latents]], timestep_ratio=timestep, **text)[0]

    return compare(f"miniFLUX DiT, {blocks}+{blocks} full-width blocks, 384p first frame", dit, call)


def vae_row(size: str) -> dict:
    t, h, w = (int(v) for v in size.split("x"))
    config = config_from_state_dict("vae", manifest_shapes("CausalVideoVAE"))
    torch.manual_seed(0)
    vae = CausalVideoVAE(**config).eval().requires_grad_(False)
    latents = torch.randn(1, 16, t, h, w, generator=torch.Generator().manual_seed(1))

    def call(model):
        return model.decoder(model.post_quant_conv(latents, None), None)

    return compare(f"causal VAE decoder, latents {size}", vae, call)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2, help="double and single DiT blocks each")
    parser.add_argument("--vae-size", default="2x8x8", help="latent frames x height x width to decode")
    args = parser.parse_args()
    print(json.dumps(dit_row(args.blocks)), flush=True)
    print(json.dumps(vae_row(args.vae_size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
