"""Per-layer recomputation for long inputs: keep only each layer's input, recompute its inside in backward.

Unlike `torch.utils.checkpoint`, a kept input can move to host memory when the GPU runs short,
which is what a million-token input needs (24 layers x 1M tokens x 768 x 4 bytes = 77 GB of layer
inputs next to ~60 GB for recomputing one layer), and the backward asks autograd for the input
gradient only, so no weight gradient is ever computed or accumulated into the model's `.grad`.

The layer may also leave values in a `Memo` during its first pass and take them back when it is
recomputed: the PyTorch scan leaves its output there, so the recomputation skips the sequential scan,
the most expensive part of a layer on CPU, at the price of one more tensor per layer.

A layer that can carry its state across time (conv inputs and scan state) runs in pieces of a few
hundred tokens, forward and recomputed: whole-layer intermediates of long inputs are tens of MB each,
and allocating, faulting in and streaming them makes the time per token grow with the length; in
pieces it stays the same (measurements: benchmarks/results/constants.md).

Inside a layer, two lighter tools keep autograd from storing what is cheap to compute again:
`recomputed` (a cheap region, run again in backward) and `saved_by_recipe` (one
tensor that autograd would keep, replaced by the function that gives it again).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from .backends import free_gpu_memory


class HostSlabs:
    """Host copies of the tensors kept from forward to backward, packed into large blocks.

    Kept one by one on the CPU, each layer input would be a mid-sized heap allocation that outlives
    the temporaries around it, and glibc's heap keeps the freed space between them resident
    (benchmarks/results/constants.md). A slab is a single
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
    if keep_free is None or x.device.type != "cuda" or free_gpu_memory(x.device) >= keep_free + x.nbytes:
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
    def forward(ctx, fn, keep_free, slabs, tile, x):
        T = x.shape[1]
        ctx.fn, ctx.device = fn, x.device
        ctx.kept = _keep(x, keep_free, slabs)
        ctx.spans = [slice(t0, min(t0 + tile, T)) for t0 in range(0, T, tile)] if tile else [slice(0, T)]
        ctx.memos = [Memo(keep_free, slabs) for _ in ctx.spans]
        ctx.states = []  # the state each piece starts from (None: where the sequence starts)
        outs, state = [], None
        with torch.no_grad():
            for span, memo in zip(ctx.spans, ctx.memos):
                ctx.states.append(state)
                out, state = fn(x[:, span], span, state, memo)
                outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.kept.to(ctx.device, non_blocking=True)
        ctx.kept = None  # free the host copy as soon as it is back on the device
        grad_x = torch.empty_like(x) if len(ctx.spans) > 1 else None
        grad_state = None  # d loss / d (the state the later piece started from)
        while ctx.spans:  # pieces in reverse order, dropping what each kept once it is done
            span, state, memo = ctx.spans.pop(), ctx.states.pop(), ctx.memos.pop()
            piece = x[:, span].detach().requires_grad_()
            if state is not None:  # a tuple or NamedTuple of tensors
                fresh = [s.detach().requires_grad_() for s in state]
                state = state._make(fresh) if hasattr(state, "_make") else tuple(fresh)
            with torch.enable_grad():
                out, state_out = ctx.fn(piece, span, state, memo)
            outputs, grads = [out], [grad_out[:, span]]
            for o, g in zip(state_out or (), grad_state or ()):
                if g is not None and o.requires_grad:
                    outputs.append(o)
                    grads.append(g)
            grad_piece, *grad_state = torch.autograd.grad(outputs, (piece, *(state or ())), grads, allow_unused=True)
            if grad_x is None:
                grad_x = grad_piece
            else:
                grad_x[:, span] = grad_piece
        return None, None, None, None, grad_x


def recompute(fn, x: torch.Tensor, keep_free: int | None = None, slabs: HostSlabs | None = None,
              tile: int | None = None) -> torch.Tensor:
    """fn over x, storing only x (and what fn puts in its memo) and re-running fn in backward.

    fn(piece, span, state, memo) -> (output of piece's shape, state): runs on piece = x[:, span],
    continuing from the state an earlier call on the tokens before `span` returned (None at the
    start); it may `memo.put` values in its first call on a piece and `memo.take` them when that
    piece is recomputed, and must give the same values both times.
    tile: run fn on pieces of `tile` tokens (dim 1), carrying its state from piece to piece, so
    that every intermediate of the recomputation is piece-sized, which keeps the work per token
    the same at any length; None: one piece. The backward recomputes pieces in reverse order.
    keep_free: None keeps x where it is; otherwise x moves to pinned host memory whenever its GPU
    would have fewer than `keep_free` bytes free after keeping it (0 = only when it cannot fit).
    slabs: where CPU tensors are kept (one `HostSlabs` shared by all layers of a model).
    """
    return _Recompute.apply(fn, keep_free, slabs, tile, x)


class _RunAgain(torch.autograd.Function):
    """fn(*args) keeping only the tensors in args; backward runs fn again with autograd on and asks
    autograd for the gradients of those of them that need one."""

    @staticmethod
    def forward(ctx, fn, *args):
        ctx.fn = fn
        ctx.at = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        ctx.others = [None if i in ctx.at else a for i, a in enumerate(args)]
        ctx.save_for_backward(*(args[i] for i in ctx.at))
        return fn(*args)

    @staticmethod
    def backward(ctx, grad):
        args = list(ctx.others)
        for i, t in zip(ctx.at, ctx.saved_tensors):
            args[i] = t.detach().requires_grad_(ctx.needs_input_grad[1 + i])
        with torch.enable_grad():
            out = ctx.fn(*args)
        wanted = [i for i in ctx.at if args[i].requires_grad]
        found = torch.autograd.grad(out, [args[i] for i in wanted], grad, allow_unused=True)
        grads = [None] * len(args)
        for i, g in zip(wanted, found):
            grads[i] = g
        return (None, *grads)


def recomputed(fn, *args):
    """fn(*args) -> one tensor, keeping only the tensors in args for backward, where fn runs again.
    For regions whose intermediates cost more memory than time (a convolution and its SiLU, or a
    projection from a narrower input). Without gradients it is fn(*args).

    Gradients reach only the tensors in args: a tensor fn reads from elsewhere (a module's weight in
    a closure) is a constant to it, so pass every weight that may need a gradient as an argument.

    A custom Function rather than `torch.utils.checkpoint`: the package calls this in every layer,
    and checkpoint's per-call work (two regions per layer) made a 1,024-token explanation on an H200 take 0.100 s instead of
    0.068 s (benchmarks/results/constants.md).
    """
    if not torch.is_grad_enabled() or not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return fn(*args)
    return _RunAgain.apply(fn, *args)


@contextlib.contextmanager
def saved_by_recipe(value: torch.Tensor, recipe: Callable[[], torch.Tensor]):
    """While the block runs, autograd keeps `recipe` wherever it would save `value` itself, and calls it
    in backward: `recipe()` must give `value` again, bit for bit, from tensors that stay alive anyway.
    Other saved tensors, views of `value` among them, are kept as usual."""
    key = (value.data_ptr(), value.shape, value.stride(), value.dtype, value.device)

    def pack(t):  # detached: a saved output holding its own grad_fn would be a reference cycle
        return recipe if (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device) == key else t.detach()

    def unpack(packed):
        if packed is not recipe:
            return packed
        with torch.no_grad():
            return recipe()

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
