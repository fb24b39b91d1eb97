"""Reference implementations for tests: slow, obviously right."""

from __future__ import annotations

import torch


def reference_scan(u, delta, A, B, C, D=None):
    """The recurrence written step by step with autograd: slow, obviously right; for tests."""
    b, d, T = u.shape
    s = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(T):
        s = torch.exp(delta[:, :, t, None] * A) * s + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((s * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    return y if D is None else y + u * D[:, None]
