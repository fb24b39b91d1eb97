"""Where the scan and the causal convolution run: plain PyTorch (any device) or mamba-ssm's CUDA kernels.

Both backends take detached delta, B, C when the ssm rule is on and never fuse an activation
(the SiLU and gate rules are applied outside the kernels), so they give the same relevance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .scan import DEFAULT_CHUNK, adjoint_by_forward_scan, selective_scan

BACKENDS = ("auto", "torch", "cuda")


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

    @property
    def carries_state(self) -> bool:
        """Whether `conv1d` and `scan` can continue from a state, so a sequence can run in pieces
        (mamba-ssm's selective_scan_fn cannot start from a given state)."""
        return self.name != "cuda"

    def conv1d(self, x, weight, bias, history=None):
        """Depthwise causal convolution without activation. x [b, d, T], weight [d, 1, k];
        history: the k - 1 inputs before x [b, d, k - 1] (zeros if None; PyTorch backend only)."""
        if self.name == "cuda":
            self._no_state(history)
            return cuda_kernels()[1](x, weight.squeeze(1), bias, activation=None)
        if history is None:
            return F.conv1d(x, weight, bias, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., : x.shape[-1]]
        return F.conv1d(torch.cat([history, x], dim=-1), weight, bias, groups=x.shape[1])

    def scan(self, u, delta, A, B, C, D, memo=None, initial_state=None):
        """(y [b, d, T], last state [b, d, n] or None). `memo` (a `recompute.Memo`) lets a recomputed
        layer reuse the PyTorch scan's output; the CUDA kernel is fast enough to simply run again.
        initial_state [b, d, n] (zeros if None) and the last state: PyTorch backend only."""
        if self.name != "cuda":
            return selective_scan(u, delta, A, B, C, D, chunk_size=self.chunk_size, memo=memo,
                                  initial_state=initial_state, return_last_state=True)
        self._no_state(initial_state)
        if any(t.requires_grad for t in (delta, A, B, C, D)):
            return _kernel_scan(u, delta, A, B, C, D), None
        return _LinearKernelScan.apply(u, delta, A, B, C, D), None

    def _no_state(self, state):
        if state is not None:
            raise ValueError(f"the {self.name} backend cannot continue from a state; use backend='torch'")


def _kernel_scan(u, delta, A, B, C, D=None):
    return cuda_kernels()[0](u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=False)


class _LinearKernelScan(torch.autograd.Function):
    """The kernel scan when only u needs a gradient (the ssm rule): the backward is the adjoint
    recurrence run by the forward kernel (`scan.adjoint_by_forward_scan`). The kernel's own backward
    also computes the unused gradients of delta, A, B, C and D, which costs more than twice the
    forward kernel (benchmarks/results/constants.md)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D):
        ctx.save_for_backward(u, delta, A, B, C, D)
        return _kernel_scan(u, delta, A, B, C, D)

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D = ctx.saved_tensors
        du = adjoint_by_forward_scan(_kernel_scan, dy.contiguous(), delta, A, B, C, D)
        if du is None:  # a delta too small to divide by: the kernel's own backward
            with torch.enable_grad():
                u = u.detach().requires_grad_()
                (du,) = torch.autograd.grad(_kernel_scan(u, delta, A, B, C, D), u, dy)
        return du, None, None, None, None, None


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
