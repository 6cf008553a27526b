"""Block swap: a DiT whose transformer blocks live in host memory and stream to the GPU.

For cards too small for the whole DiT. The embedders, norms and output layers stay on the
device; the last ``swapped`` transformer blocks' weights stay in pinned host memory, the
others on the device. A forward pre-hook on each block makes sure
its weights are on the device and starts copying the next ``ahead`` blocks on a side CUDA
stream, so the copies overlap the blocks that compute; a forward hook then drops the block's
device copy again. The weights are the same tensors' values moved, never recomputed or
rounded, so outputs are identical to keeping everything on the device.

The last blocks prefetch the first ones, so consecutive calls (sampling steps) never wait
for the first swapped block. Device memory in use: the blocks that stay, plus ``1 + ahead``
streamed blocks.
"""

from __future__ import annotations

import torch
from torch import nn


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of a pyramid DiT in the order its forward runs them."""
    blocks = list(getattr(model, "transformer_blocks", []))
    blocks += list(getattr(model, "single_transformer_blocks", []))
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no transformer blocks to swap")
    return blocks


class BlockSwap:
    """Install block swapping on ``model`` (a pyramid DiT) for ``device``.

    Args:
        model: the DiT, anywhere; its non-block parts and the resident blocks are moved to
            ``device``, the other blocks to (pinned, on CUDA) host memory.
        device: where the model computes.
        swapped: how many blocks, counted from the last, live on the host; the others stay on
            the device (fewer swapped is faster, more saves memory).
        ahead: blocks copied ahead of the one computing (1 or 2 hide the copies).

    ``remove()`` takes the hooks off and leaves every block on the host.
    """

    def __init__(self, model: nn.Module, device: torch.device | str, swapped: int, ahead: int = 1) -> None:
        self.device = torch.device(device)
        self.blocks = transformer_blocks(model)
        if not 1 <= swapped <= len(self.blocks):
            raise ValueError(f"block swap of {swapped} blocks: give 1 to {len(self.blocks)} (this model's blocks)")
        if ahead < 1:
            raise ValueError(f"ahead={ahead}: copy at least 1 block ahead")
        self.ahead = ahead
        self.swapped = self.blocks[len(self.blocks) - swapped:]
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        block_ids = {id(b) for b in self.swapped}
        for module in model.children():               # everything but the swapped blocks goes to the device
            if isinstance(module, nn.ModuleList):
                for block in module:
                    if id(block) not in block_ids:
                        block.to(self.device)
            else:
                module.to(self.device)
        for tensor in [*model.parameters(recurse=False), *model.buffers(recurse=False)]:
            tensor.data = tensor.data.to(self.device)
        # Host copies: pinned on CUDA (asynchronous copies need page-locked memory).
        self.host = [[p.data.to("cpu").pin_memory() if cuda else p.data.to("cpu") for p in self._tensors(b)]
                     for b in self.swapped]
        for block, host in zip(self.swapped, self.host):
            for tensor, copy in zip(self._tensors(block), host):
                tensor.data = copy
        self.pending: dict[int, torch.cuda.Event | None] = {}   # block index -> copy done
        self.loads: list[int] = []                             # copies started, in order (for tests)
        self.handles = []
        for index, block in enumerate(self.swapped):
            self.handles.append(block.register_forward_pre_hook(self._before(index)))
            self.handles.append(block.register_forward_hook(self._after(index)))

    @staticmethod
    def _tensors(block: nn.Module) -> list[torch.Tensor]:
        return [*block.parameters(), *block.buffers()]

    def _load(self, index: int) -> None:
        """Start copying block ``index`` to the device (on the side stream on CUDA)."""
        if index in self.pending:
            return
        self.loads.append(index)
        block, host = self.swapped[index], self.host[index]
        if self.stream is None:
            for tensor, copy in zip(self._tensors(block), host):
                tensor.data = copy.to(self.device)
            self.pending[index] = None
            return
        # The side stream must not overwrite memory the compute stream may still read.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for tensor, copy in zip(self._tensors(block), host):
                tensor.data = copy.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.pending[index] = event

    def _before(self, index: int):
        def hook(block, args):
            self._load(index)
            event = self.pending[index]
            if event is not None:
                compute = torch.cuda.current_stream(self.device)
                compute.wait_event(event)
                for tensor in self._tensors(block):
                    # Allocated on the side stream, read on the compute stream: keep it until that is done.
                    tensor.data.record_stream(compute)
            for step in range(1, self.ahead + 1):
                self._load((index + step) % len(self.swapped))
        return hook

    def _after(self, index: int):
        def hook(block, args, output):
            for tensor, copy in zip(self._tensors(block), self.host[index]):
                tensor.data = copy
            del self.pending[index]
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for index in list(self.pending):
            for tensor, copy in zip(self._tensors(self.swapped[index]), self.host[index]):
                tensor.data = copy
        self.pending.clear()
