"""Linear layers whose weights are stored in fp8 (e4m3fn): half the memory of bf16.

The weights are the checkpoint's values cast to fp8 without a scale, as ComfyUI stores its
own fp8 weights, so ComfyUI's weight patching (LoRA) reads and writes them as it does for
core models. Two ways to compute:

* **fp8 matmul** (``torch._scaled_mm``) on GPUs that have it, CUDA compute capability 8.9
  and newer (Ada, Hopper, Blackwell): the input is scaled per tensor into fp8's range
  (scale = amax / 448, computed on the device: no host sync) and multiplied by the fp8
  weight, accumulating in fp32, out in the input's dtype.
* **upcast** elsewhere: the weight is cast to the input's dtype for the call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max          # 448
# _scaled_mm needs both matrix dimensions of the weight divisible by 16.
_ALIGN = 16


def has_fp8_matmul(device: torch.device) -> bool:
    """Whether ``device`` multiplies fp8 matrices in hardware (CUDA sm_89+, not ROCm)."""
    device = torch.device(device)
    if device.type != "cuda" or torch.version.hip or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


class Fp8Linear(nn.Linear):
    """``nn.Linear`` with an fp8 weight; bias and input in the compute dtype.

    ``fp8_matmul``: None (the default) uses fp8 matmuls where :func:`has_fp8_matmul` says the
    device has them; True/False forces the choice (tests run the fp8 path on the CPU, whose
    ``_scaled_mm`` computes the same thing slowly).
    """

    fp8_matmul: bool | None = None

    def _use_scaled_mm(self, x: torch.Tensor) -> bool:
        wanted = has_fp8_matmul(x.device) if self.fp8_matmul is None else self.fp8_matmul
        return (wanted and x.dtype in (torch.bfloat16, torch.float16) and self.weight.dtype == FP8
                and self.in_features % _ALIGN == 0 and self.out_features % _ALIGN == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if not self._use_scaled_mm(x):
            return F.linear(x, self.weight.to(x.dtype), bias)
        rows = x.reshape(-1, self.in_features)
        # Per-tensor input scale into fp8's range; the floor keeps an all-zero input finite.
        scale = (rows.abs().amax().float() / FP8_MAX).clamp_min(1e-12)
        quantised = (rows.float() / scale).to(FP8)
        out = torch._scaled_mm(quantised, self.weight.t(), scale_a=scale, scale_b=self.weight_scale,
                               bias=bias, out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def fp8_linear_names(model: nn.Module) -> set[str]:
    """State-dict names of the weights that fp8 storage narrows: every plain ``nn.Linear``'s."""
    return {f"{name}.weight" for name, module in model.named_modules() if type(module) in (nn.Linear, Fp8Linear)}


def use_fp8_linears(model: nn.Module) -> nn.Module:
    """Turn every plain ``nn.Linear`` of ``model`` whose weight is fp8 into :class:`Fp8Linear`."""
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.dtype == FP8:
            module.__class__ = Fp8Linear
            # The weights are stored unscaled; a device-side 1 for _scaled_mm, outside the state dict.
            module.register_buffer("weight_scale", torch.ones((), dtype=torch.float32, device=module.weight.device),
                                   persistent=False)
    return model
