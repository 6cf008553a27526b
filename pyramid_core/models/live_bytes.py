"""Count the bytes of tensors alive during a computation, on any device, the meta device too.

The CUDA allocator reports a peak (``torch.cuda.max_memory_allocated``); the CPU and the meta
device do not. :class:`LiveBytes` watches every tensor the operators inside its ``with``
block return, counts its storage once while that storage is alive, and keeps the peak. On
the meta device (shapes only, no arithmetic) this measures the memory a layer stack needs
at any size in a fraction of a second, which is how the VAE's tile chooser learns its cost
per pixel (``models/vae/budget.py``).

What it cannot see: memory that kernels allocate outside PyTorch's tensors (cuDNN and
oneDNN workspaces), and the caching allocator's rounding. Callers add a margin for those.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes("cpu") as meter: ...``; then ``meter.peak`` (bytes) and ``meter.live``.

    Only tensors on ``device`` (a device type: "cpu", "cuda", "meta") created inside the
    block count: inputs made before it are not part of either figure. Views and in-place
    results share a storage already counted.
    """

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = torch.device(device).type
        self.live = 0
        self.peak = 0
        self._alive: dict[int, weakref.finalize] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self._alive.pop(key, None)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != self.device:
                continue
            storage = tensor.untyped_storage()
            key = id(storage)
            if key in self._alive:
                continue
            nbytes = storage.nbytes()
            # The storage's Python object lives exactly as long as the storage itself
            # (PyTorch preserves it while any tensor uses it), so its finaliser marks the free.
            self._alive[key] = weakref.finalize(storage, self._freed, key, nbytes)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for finaliser in list(self._alive.values()):   # stop counting what outlives the block
            finaliser.detach()
        self._alive.clear()
