"""Run under ``torchrun --nproc_per_node N``: each parallel mode that fits N ranks against one process.

Every rank builds the same random miniFLUX and SD3 DiTs (12 heads: N = 2, 3, 4 and 6 divide
them), calls each on one inference-shaped input -- a CFG batch of 2, two history clips at lower
resolution (so the frame-causal mask is on), padded text rows, different timesteps per row --
first alone, then through :func:`pyramid_core.parallel.parallelize`, and writes the largest
difference per (family, mode) to ``OUT/rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pyramid_core.distributed import cleanup, init_distributed
from pyramid_core.models import PyramidDiffusionMMDiT, PyramidFluxTransformer
from pyramid_core.parallel import make_groups, parallelize, plan_parallel

HEADS = 12


def build(family: str):
    torch.manual_seed(0)
    if family == "flux":
        model = PyramidFluxTransformer(num_layers=1, num_single_layers=1, attention_head_dim=16,
                                       num_attention_heads=HEADS, joint_attention_dim=32, pooled_projection_dim=16,
                                       axes_dims_rope=(4, 6, 6))
    else:
        model = PyramidDiffusionMMDiT(sample_size=32, num_layers=2, attention_head_dim=16, num_attention_heads=HEADS,
                                      caption_projection_dim=HEADS * 16, pooled_projection_dim=16,
                                      pos_embed_max_size=16, joint_attention_dim=32)
    # random (not adaLN-zero) weights, so that every block changes the tokens
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def inputs(batch: int = 2, text_len: int = 7):
    g = torch.Generator().manual_seed(1)
    # history: 1 frame at 1/4 size, 1 frame at 1/2 size; the noisy unit 2 frames at 8x12
    clips = [torch.randn(batch, 16, 1, 2, 4, generator=g), torch.randn(batch, 16, 1, 4, 6, generator=g),
             torch.randn(batch, 16, 2, 8, 12, generator=g)]
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[0, 4:] = 0                                                # padded text in one row
    return dict(sample=[clips], encoder_hidden_states=torch.randn(batch, text_len, 32, generator=g),
                encoder_attention_mask=mask, pooled_projections=torch.randn(batch, 16, generator=g),
                timestep_ratio=torch.tensor([900.0, 350.0]))


def main(out_dir: str) -> None:
    info = init_distributed("cpu")
    n = info.world_size
    modes = ["sequence"] + (["cfg"] if n == 2 else []) + (["cfg+sequence"] if n % 2 == 0 and n >= 4 else [])
    results = {}
    for family in ("flux", "mmdit"):
        for mode in modes:
            dit = build(family)
            with torch.no_grad():
                alone = dit(**inputs())[0]
                groups = make_groups(plan_parallel(mode, n, one_video=True), info)
                seen = []                                          # what the first block is given on this rank
                first = dit.transformer_blocks[0]
                handle = first.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[:2])))
                parallel = parallelize(dit, groups)(**inputs())[0]
                handle.remove()
            results[f"{family}/{mode}"] = {"max_diff": (parallel - alone).abs().max().item(),
                                           "scale": alone.abs().max().item(), "shape": list(parallel.shape),
                                           "block_input": [list(s) for s in seen]}
    Path(out_dir, f"rank{info.rank}.json").write_text(json.dumps(results))
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
