"""Still frames through the causal VAE: the single-frame path against the full padded conv.

A causal conv pads the time axis with zeros in front, so a lone frame (an image encoded, a VAE
trained on still frames) is the last of its only window and the other time taps multiply zeros;
``CausalConv3d.single_frame`` convolves with the last tap alone. This prints, side by side in
one run (alternating rounds, the median of each), the seconds of

* ``train_step``: encode, sample, decode, MSE, backward, on a batch of still frames (what
  ``train-vae num_frames=1`` and the toy recipe's first VAE phase run);
* ``encode``: the posterior of one image, without gradients;

with the single-frame path and with the padded conv every frame had before it, and their ratio.
The VAE is ``scripts/train_toy_model.py``'s (the released block layout at an eighth of its
width) unless ``--width`` scales it, with random weights.

    python benchmarks/vae_single_frame.py [--batch 8] [--size 64] [--rounds 5] [--threads 2] [--width 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from pyramid_core.models.vae import CausalConv3d, CausalVideoVAE  # noqa: E402

from train_toy_model import VAE_CONFIG  # noqa: E402

SINGLE_FRAME = CausalConv3d.single_frame


def padded_conv(self: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
    """What every frame ran before the single-frame path: the conv over the zero-padded window."""
    return self.conv(F.pad(x, self.time_padding))


def make_vae(width: int) -> CausalVideoVAE:
    scale = width / VAE_CONFIG["encoder_block_out_channels"][0]
    config = {k: v for k, v in VAE_CONFIG.items() if not k.startswith("_")}
    for key in ("encoder_block_out_channels", "decoder_block_out_channels"):
        config[key] = [int(c * scale) for c in config[key]]
    return CausalVideoVAE(**config)


def train_step(vae: CausalVideoVAE, frames: torch.Tensor) -> None:
    vae.zero_grad(set_to_none=True)
    posterior = vae.encode(frames)
    loss = F.mse_loss(vae.decode(posterior.sample()), frames) + 1e-5 * posterior.kl().mean()
    loss.backward()


def encode(vae: CausalVideoVAE, frames: torch.Tensor) -> None:
    with torch.no_grad():
        vae.encode(frames[:1]).mode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="still frames per training step")
    parser.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    parser.add_argument("--width", type=int, default=16, help="the first block's channels (the released: 128)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = make_vae(args.width)
    frames = torch.rand(args.batch, 3, 1, args.size, args.size) * 2 - 1
    for name, work in (("train_step", train_step), ("encode", encode)):
        seconds = {"single_frame": [], "padded": []}
        for _ in range(args.rounds + 1):                    # the first round warms both up
            for path, forward in (("single_frame", SINGLE_FRAME), ("padded", padded_conv)):
                CausalConv3d.single_frame = forward
                start = time.perf_counter()
                work(vae, frames)
                seconds[path].append(time.perf_counter() - start)
        CausalConv3d.single_frame = SINGLE_FRAME
        single, padded = (statistics.median(s[1:]) for s in (seconds["single_frame"], seconds["padded"]))
        print(json.dumps({"case": name, "batch": args.batch if name == "train_step" else 1, "size": args.size,
                          "width": args.width, "threads": args.threads, "single_frame_s": round(single, 4),
                          "padded_s": round(padded, 4), "speedup": round(padded / single, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
