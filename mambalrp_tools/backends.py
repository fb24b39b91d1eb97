"""Where the scan and the causal convolution run: plain PyTorch (any device) or mamba-ssm's CUDA kernels.

Both backends take detached delta, B, C when the ssm rule is on and never fuse an activation
(the SiLU and gate rules are applied outside the kernels), so they give the same relevance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .scan import DEFAULT_CHUNK, selective_scan

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

    def conv1d(self, x, weight, bias):
        """Depthwise causal convolution without activation. x [b, d, T], weight [d, 1, k]."""
        if self.name == "cuda":
            return cuda_kernels()[1](x, weight.squeeze(1), bias, activation=None)
        return F.conv1d(x, weight, bias, padding=weight.shape[-1] - 1, groups=x.shape[1])

    def scan(self, u, delta, A, B, C, D, memo=None):
        """y [b, d, T]. `memo` (a `recompute.Memo`) lets a recomputed layer reuse the PyTorch scan's
        output; the CUDA kernel is fast enough to simply run again."""
        if self.name == "cuda":
            return cuda_kernels()[0](u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=False)
        return selective_scan(u, delta, A, B, C, D, chunk_size=self.chunk_size, memo=memo)


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
