"""Per-layer recomputation for long inputs: keep only each layer's input, recompute its inside in backward.

Unlike `torch.utils.checkpoint`, the kept input can live in host memory (`offload=True`), which is
what a million-token input needs (24 layers x 1M tokens x 768 x 4 bytes = 77 GB of layer inputs),
and the backward asks autograd for the input gradient only, so no weight gradient is ever computed
or accumulated into the model's `.grad`.
"""

from __future__ import annotations

import torch


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, offload, x):
        ctx.fn, ctx.device = fn, x.device
        ctx.kept = x.detach().to("cpu") if offload else x.detach()
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.kept.to(ctx.device).requires_grad_()
        ctx.kept = None  # free the kept input as soon as it is back on the device
        with torch.enable_grad():
            out = ctx.fn(x)
        (grad_x,) = torch.autograd.grad(out, x, grad_out)
        return None, None, grad_x


def recompute(fn, x: torch.Tensor, offload: bool = False) -> torch.Tensor:
    """fn(x), storing only x (on the host if `offload`) and re-running fn in backward."""
    return _Recompute.apply(fn, offload, x)
