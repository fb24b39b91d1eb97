"""Numerics shared by the forward passes: in which dtype matmuls run, and what stays float32.

Three precisions (`explain(..., precision=)`, `lrp_mode(..., precision=)`):
- "float32": every operand of a matmul or convolution is upcast (half precision -> float32; float64
  models stay float64). Exact: relevance conserves f to float32 rounding.
- "tf32": as "float32", but CUDA float32 matmuls may use TF32 tensor cores (operands rounded to a
  10-bit mantissa, float32 accumulation: `torch.set_float32_matmul_precision("high")` for the
  duration). float32 matmuls otherwise run on SIMT kernels, half of a float32 explanation's GPU time
  (benchmarks/results/h200_2026-12-01.md). No effect on a CPU.
- "model": matmuls and convolutions run in the model's own dtype (GPUs and CPUs accumulate bf16/fp16
  products in float32), their results are upcast. The residual stream, the norms, the scan and its
  state, and the relevance readout stay float32. For float32 models both are the same.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("float32", "tf32", "model")
DEFAULT_PRECISION = "float32"


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32 (relevance needs it); float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


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
