"""Per-layer recomputation for long inputs: keep only each layer's input, recompute its inside in backward.

Unlike `torch.utils.checkpoint`, a kept input can move to host memory when the GPU runs short,
which is what a million-token input needs (24 layers x 1M tokens x 768 x 4 bytes = 77 GB of layer
inputs next to ~60 GB for recomputing one layer), and the backward asks autograd for the input
gradient only, so no weight gradient is ever computed or accumulated into the model's `.grad`.
"""

from __future__ import annotations

import torch


def _keep(x: torch.Tensor, keep_free: int | None) -> torch.Tensor:
    """x itself, or a copy in pinned host memory when fewer than `keep_free` bytes are free on its GPU."""
    if keep_free is None or x.device.type != "cuda" or torch.cuda.mem_get_info(x.device)[0] >= keep_free + x.nbytes:
        return x.detach()
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    return host.copy_(x, non_blocking=True)


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, keep_free, x):
        ctx.fn, ctx.device = fn, x.device
        ctx.kept = _keep(x, keep_free)
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.kept.to(ctx.device, non_blocking=True).requires_grad_()
        ctx.kept = None  # free the host copy as soon as it is back on the device
        with torch.enable_grad():
            out = ctx.fn(x)
        (grad_x,) = torch.autograd.grad(out, x, grad_out)
        return None, None, grad_x


def recompute(fn, x: torch.Tensor, keep_free: int | None = None) -> torch.Tensor:
    """fn(x), storing only x and re-running fn in backward.

    keep_free: None keeps x where it is; otherwise x moves to pinned host memory whenever its GPU
    would have fewer than `keep_free` bytes free after keeping it (0 = only when it cannot fit).
    """
    return _Recompute.apply(fn, keep_free, x)
