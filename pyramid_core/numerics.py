"""Stop on NaN or inf in inference instead of writing a black video.

A DiT or VAE run in fp16 can overflow (fp16's largest value is 65504; bf16 and fp32 reach
3.4e38): the older ComfyUI wrapper's users on GPUs without bf16 (2080 Ti) got NaN latents and
a black video with no message. The sampler checks the DiT's prediction after every step and
the VAE its decoded pixels; the first non-finite value stops the run with
:class:`NonFiniteOutputError`, whose message names the dtype and what to use instead.
"""

from __future__ import annotations

import torch

DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


class NonFiniteOutputError(FloatingPointError):
    """A model's output holds NaN or inf values; the message says which model, where, and what to change."""


def check_finite(values: torch.Tensor, what: str, dtype: torch.dtype, where: str = "") -> None:
    """Raise :class:`NonFiniteOutputError` if ``values`` hold NaN or inf.

    Args:
        values: any tensor (one host sync to read the answer).
        what: the model in words, as the user chose it ("the DiT", "the VAE").
        dtype: the dtype the model computes in: the advice depends on it.
        where: where in the run, e.g. "stage 2, step 3 of unit 1".
    """
    if bool(torch.isfinite(values).all()):
        return
    name = DTYPE_NAMES.get(dtype, str(dtype))
    at = f" at {where}" if where else ""
    if dtype == torch.float16:
        advice = (f"fp16 overflows where bf16 and fp32 do not (its largest value is 65504). Load {what} in bf16 "
                  "(GPUs since NVIDIA Ampere / RTX 30xx, and CPUs), or in fp32 on a GPU without bf16 "
                  "(e.g. RTX 20xx, GTX 10xx): the loader's precision, or --dtype / --vae-dtype on the command line.")
    else:
        advice = (f"{name} does not overflow on healthy weights: the weights or the inputs hold NaN or inf. Check "
                  "the file (python -m pyramid_core doctor), or try fp32.")
    raise NonFiniteOutputError(f"{what} gave NaN or inf values in {name}{at}, so the run stopped instead of making "
                               f"a black video. {advice}")
