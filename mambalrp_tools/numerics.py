"""Numerics shared by the forward passes: relevance is computed in at least float32."""

from __future__ import annotations

import torch


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32 (relevance needs it); float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
