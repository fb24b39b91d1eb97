"""Per-layer recomputation for long inputs: keep only each layer's input, recompute its inside in backward.

Unlike `torch.utils.checkpoint`, a kept input can move to host memory when the GPU runs short,
which is what a million-token input needs (24 layers x 1M tokens x 768 x 4 bytes = 77 GB of layer
inputs next to ~60 GB for recomputing one layer), and the backward asks autograd for the input
gradient only, so no weight gradient is ever computed or accumulated into the model's `.grad`.

The layer may also leave values in a `Memo` during its first pass and take them back when it is
recomputed: the PyTorch scan leaves its output there, so the recomputation skips the sequential scan,
the most expensive part of a layer on CPU, at the price of one more tensor per layer.
"""

from __future__ import annotations

import torch


class HostSlabs:
    """Host copies of the tensors kept from forward to backward, packed into large blocks.

    Kept one by one on the CPU, each layer input would be a mid-sized heap allocation that outlives
    the temporaries around it, and glibc's heap keeps the freed space between them resident
    (measured: about 0.5 GiB more peak RSS at 8,192 tokens on the 130m model). A slab is a single
    large allocation, returned to the system once every tensor in it is freed.
    """

    SLAB_BYTES = 256 << 20
    ALIGN = 64

    def __init__(self):
        self._slab, self._used = None, 0

    def copy(self, x: torch.Tensor) -> torch.Tensor:
        nbytes = -(-x.nbytes // self.ALIGN) * self.ALIGN
        if nbytes > self.SLAB_BYTES:  # large enough to get its own mapping anyway
            return x.detach()
        if self._slab is None or self._used + nbytes > self.SLAB_BYTES:
            self._slab, self._used = torch.empty(self.SLAB_BYTES, dtype=torch.uint8), 0
        view = self._slab[self._used : self._used + x.nbytes].view(x.dtype).view(x.shape)
        self._used += nbytes
        return view.copy_(x)


def _keep(x: torch.Tensor, keep_free: int | None, slabs: HostSlabs | None = None) -> torch.Tensor:
    """x itself (packed into `slabs` on the CPU), or a copy in pinned host memory when fewer than
    `keep_free` bytes are free on its GPU."""
    if x.device.type == "cpu":
        return x.detach() if slabs is None else slabs.copy(x)
    if keep_free is None or x.device.type != "cuda" or torch.cuda.mem_get_info(x.device)[0] >= keep_free + x.nbytes:
        return x.detach()
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    return host.copy_(x, non_blocking=True)


class Memo:
    """Tensors a layer's first (no-grad) pass leaves for its recomputation, kept like the layer input."""

    def __init__(self, keep_free: int | None = None, slabs: HostSlabs | None = None):
        self.keep_free, self.slabs = keep_free, slabs
        self._kept: dict[str, tuple[torch.Tensor, ...]] = {}

    def put(self, key: str, *tensors: torch.Tensor) -> None:
        self._kept[key] = tuple(_keep(t, self.keep_free, self.slabs) for t in tensors)

    def take(self, key: str, device: torch.device) -> tuple[torch.Tensor, ...] | None:
        """The tensors left under `key` (back on `device`), once; None if there are none."""
        kept = self._kept.pop(key, None)
        return None if kept is None else tuple(t.to(device, non_blocking=True) for t in kept)


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, keep_free, slabs, x):
        ctx.fn, ctx.device = fn, x.device
        ctx.kept = _keep(x, keep_free, slabs)
        ctx.memo = Memo(keep_free, slabs)
        with torch.no_grad():
            return fn(x, ctx.memo)

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.kept.to(ctx.device, non_blocking=True).requires_grad_()
        ctx.kept = None  # free the host copy as soon as it is back on the device
        with torch.enable_grad():
            out = ctx.fn(x, ctx.memo)
        ctx.memo = None
        (grad_x,) = torch.autograd.grad(out, x, grad_out)
        return None, None, None, grad_x


def recompute(fn, x: torch.Tensor, keep_free: int | None = None, slabs: HostSlabs | None = None) -> torch.Tensor:
    """fn(x, memo), storing only x (and what fn puts in `memo`) and re-running fn in backward.

    keep_free: None keeps x where it is; otherwise x moves to pinned host memory whenever its GPU
    would have fewer than `keep_free` bytes free after keeping it (0 = only when it cannot fit).
    slabs: where CPU tensors are kept (one `HostSlabs` shared by all layers of a model).
    fn must give the same values both times; it may `memo.put` values in the first call and
    `memo.take` them in the second.
    """
    return _Recompute.apply(fn, keep_free, slabs, x)
