"""Numerics shared by the forward passes: in which dtype matmuls run, and what stays float32.

Three precisions (`explain(..., precision=)`, `lrp_mode(..., precision=)`):
- "float32": every operand of a matmul or convolution is upcast (half precision -> float32; float64
  models stay float64). Exact: relevance conserves f to float32 rounding.
- "tf32": as "float32", but CUDA float32 matmuls may use TF32 tensor cores (operands rounded to a
  10-bit mantissa, float32 accumulation: `torch.set_float32_matmul_precision("high")` for the
  duration). float32 matmuls otherwise run on SIMT kernels, half of a float32 explanation's GPU time
  (benchmarks/results/h200_2026-12-01.md). No effect on a CPU.
- "model": matmuls and convolutions run in the model's own dtype (GPUs and CPUs accumulate bf16/fp16
  products in float32). The residual stream, the norms, the scan's state and arithmetic, and the
  relevance readout stay float32. Between them, an architecture may keep its activations in the
  model's dtype (`activation_dtype`; Mamba-1 does for bfloat16, as transformers' own kernels do):
  half the memory traffic, which is what the elementwise work of an explanation on a GPU is bound
  by. For float32 models "model" and "float32" are the same.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("float32", "tf32", "model")
DEFAULT_PRECISION = "float32"


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32 (relevance needs it); float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def activation_dtype(dtype: torch.dtype, precision: str) -> torch.dtype:
    """The dtype in which a mixer keeps its activations (the tensors between its matmuls, the scan's
    inputs and outputs): the model's own under "model" for bfloat16, else at least float32. float16
    activations stay float32: the scan's loading steps need widths ~1e-9, below float16's range."""
    if precision == "model" and dtype == torch.bfloat16:
        return dtype
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def resolve_precision(precision: str | None) -> str:
    if precision is None:
        return DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (or None for {DEFAULT_PRECISION!r}), got {precision!r}")
    return precision


def operand(p: torch.Tensor | None, precision: str) -> torch.Tensor | None:
    """A weight as the matmuls use it: upcast under "float32" and "tf32", the model's own under "model"."""
    if p is None:
        return None
    return p if precision == "model" else upcast(p)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, precision: str) -> torch.Tensor:
    """x W^T + b in the precision's dtype, returned in at least float32."""
    w = operand(weight, precision)
    return upcast(torch.nn.functional.linear(x.to(w.dtype), w, operand(bias, precision)))


def project(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, precision: str,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """weight @ x (+ bias) over the channels of x [b, in, T] -> [b, out, T], time-major in memory
    (strides (T, b T, 1), which the scan and convolution kernels read as they are), computed in the
    precision's dtype and returned in `dtype` (None: as computed).

    One matmul over all b T tokens; neither x in its layout nor the token-major one of a residual
    stream ([b, T, in] transposed) is copied, and neither is the result.
    """
    w = operand(weight, precision)
    b, channels, T = x.shape
    out = (w @ x.to(w.dtype).transpose(0, 1).reshape(channels, b * T)).view(-1, b, T).transpose(0, 1)
    if bias is not None:
        out = out + operand(bias, precision)[:, None]
    return out if dtype is None else out.to(dtype)


@contextlib.contextmanager
def matmul_precision(precision: str):
    """TF32 for float32 matmuls while a "tf32" explanation runs (forward and backward), then the
    process' own setting back; nothing for the other precisions."""
    if precision != "tf32":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
