"""Where the scan and the causal convolution run: plain PyTorch (any device) or mamba-ssm's CUDA kernels.

Both backends take detached delta, B, C when the ssm rule is on and never fuse an activation
(the SiLU and gate rules are applied outside the kernels), so they give the same relevance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .numerics import upcast
from .scan import DEFAULT_CHUNK, adjoint_by_forward_scan, scan_from_state, selective_scan

BACKENDS = ("auto", "torch", "cuda")
#: tokens per piece of a recomputed layer (`Backend.recompute_tile`; benchmarks/results/constants.md)
RECOMPUTE_TILE = 512
RECOMPUTE_TILE_CUDA = 16384


def free_gpu_memory(device: torch.device) -> int:
    """Bytes a new tensor can get on a CUDA device: the driver's free memory plus what torch's caching
    allocator holds without using it (after a large explanation that cache would otherwise count as
    taken, and the next call would size its batches, or decide to recompute, as if the GPU were full)."""
    return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


@functools.lru_cache(maxsize=None)
def cuda_kernels():
    """(selective_scan_fn, causal_conv1d_fn) from mamba-ssm / causal-conv1d, or None if not installed."""
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a wheel built for another torch (ABI error)
        return None
    return selective_scan_fn, causal_conv1d_fn


@dataclass(frozen=True)
class Backend:
    name: str = "torch"
    chunk_size: int = DEFAULT_CHUNK

    def carries_state(self, ssm_rule: bool) -> bool:
        """Whether `conv1d` and `scan` can continue from a state, so a sequence can run in pieces.
        mamba-ssm's selective_scan_fn cannot start from a given state; under the ssm rule the CUDA
        backend loads it in extra leading steps (`_LinearKernelScan`), whose gradient is exact only
        for the linear path in u and the state; for true gradients it cannot."""
        return self.name != "cuda" or ssm_rule

    @property
    def recompute_tile(self) -> int:
        """Tokens per piece when a recomputed layer runs in pieces (see `recompute`): small enough that
        one piece's intermediates stay a few MB on a CPU, large enough on a GPU that kernel launches do
        not dominate (benchmarks/results/constants.md)."""
        return RECOMPUTE_TILE_CUDA if self.name == "cuda" else RECOMPUTE_TILE

    def conv1d(self, x, weight, bias, history=None):
        """Depthwise causal convolution without activation. x [b, d, T], weight [d, 1, k];
        history: the k - 1 inputs before x [b, d, k - 1] (zeros if None)."""
        if self.name == "cuda" and history is None:
            if x.stride(1) == 1 and (x.stride(0) % 8 or x.stride(2) % 8):
                x = x.contiguous()  # causal-conv1d's channel-last kernel needs strides in multiples of 8
            return cuda_kernels()[1](x, weight.squeeze(1), bias, activation=None)
        if history is None:
            return F.conv1d(x, weight, bias, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., : x.shape[-1]]
        return F.conv1d(torch.cat([history, x], dim=-1), weight, bias, groups=x.shape[1])

    def scan(self, u, delta, A, B, C, D, memo=None, initial_state=None):
        """(y [b, d, T], last state [b, d, n] or None). `memo` (a `recompute.Memo`) lets a recomputed
        layer reuse the PyTorch scan's output; the CUDA kernel is fast enough to simply run again.
        initial_state [b, d, n] (zeros if None) and the last state: on the CUDA backend only under the
        ssm rule (the last state is None otherwise). u, delta, B, C in one dtype (bfloat16 or at least
        float32), the arithmetic and the state in at least float32."""
        if self.name != "cuda":  # in at least float32, as mamba-ssm's kernel computes; y in u's dtype
            y, last = selective_scan(upcast(u), upcast(delta), A, upcast(B), upcast(C), D, chunk_size=self.chunk_size,
                                     memo=memo, initial_state=initial_state, return_last_state=True)
            return y.to(u.dtype), last
        if any(t.requires_grad for t in (delta, A, B, C, D)):
            if initial_state is not None:
                raise ValueError("the cuda backend continues from a state only under the ssm rule; "
                                 "use backend='torch' for true gradients in pieces")
            return _kernel_scan(u, delta, A, B, C, D), None
        return _LinearKernelScan.apply(u, initial_state, delta, A, B, C, D, _kernel_scan)


def _kernel_scan(u, delta, A, B, C, D=None, return_last_state=False):
    return cuda_kernels()[0](u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=return_last_state)


class _LinearKernelScan(torch.autograd.Function):
    """The kernel scan when only u and a start state s0 [b, d, n] need gradients (the ssm rule).

    mamba-ssm's kernel always starts from zero; `scan.scan_from_state` loads s0 in n extra leading
    steps. The backward is the adjoint recurrence run by the same forward kernel, from d(last)
    (`scan.adjoint_by_forward_scan`); the kernel's own backward would also compute the unused
    gradients of delta, A, B, C and D (benchmarks/results/constants.md). Returns (y, last state), so a
    sequence can run in pieces. Where a value would overflow the loading steps or a delta is too
    small to divide by, the PyTorch scan runs instead (exact, slower). `scan(u, delta, A, B, C, D,
    return_last_state)` is the forward kernel (a parameter so the algebra is tested on CPU).
    """

    @staticmethod
    def forward(ctx, u, s0, delta, A, B, C, D, scan):
        out = scan_from_state(scan, u, delta, A, B, C, D, s0)
        ctx.fallback = out is None
        if out is None:
            out = selective_scan(u, delta, A, B, C, D, initial_state=s0, return_last_state=True)
        ctx.set_materialize_grads(False)  # an unused last state must cost nothing in backward (dlast None)
        ctx.save_for_backward(delta, A, B, C, D)
        ctx.scan, ctx.has_state = scan, s0 is not None
        return out

    @staticmethod
    def backward(ctx, dy, dlast):
        delta, A, B, C, D = ctx.saved_tensors
        dy = torch.zeros_like(delta) if dy is None else dy if dy.stride(-1) == 1 else dy.contiguous()
        grads = None if ctx.fallback else adjoint_by_forward_scan(ctx.scan, dy, delta, A, B, C, D, dlast)
        if grads is None:  # the PyTorch scan's gradient; the scan is linear, so at u = 0, s0 = 0
            with torch.enable_grad():
                u = torch.zeros_like(dy).requires_grad_()
                s0 = dy.new_zeros(*dy.shape[:2], A.shape[1]).requires_grad_()
                y, last = selective_scan(u, delta, A, B, C, D, initial_state=s0, return_last_state=True)
                outputs, seeds = ((y, last), (dy, dlast)) if dlast is not None else ((y,), (dy,))
                grads = torch.autograd.grad(outputs, (u, s0), seeds)
        du, ds0 = grads
        return du, (ds0 if ctx.has_state else None), None, None, None, None, None, None


def resolve(backend: str, device: torch.device, chunk_size: int = DEFAULT_CHUNK) -> Backend:
    """'auto' takes the CUDA kernels when the model is on a GPU and they are installed, else PyTorch."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    on_gpu = torch.device(device).type == "cuda"
    if backend == "cuda":
        if not on_gpu:
            raise ValueError("backend='cuda' needs the model on a CUDA device")
        if cuda_kernels() is None:
            raise ValueError("backend='cuda' needs mamba-ssm and causal-conv1d: pip install 'mambalrp_tools[gpu]'")
    if backend == "auto":
        backend = "cuda" if on_gpu and cuda_kernels() is not None else "torch"
    return Backend(backend, chunk_size)
