"""The SSD scan of Mamba-2 (scalar decay per head) in plain PyTorch, chunked over time.

    s_t = exp(dt_t A_h) s_{t-1} + dt_t x_t B_t^T      (per head h: state [head_dim p, d_state n])
    y_t = s_t C_t + D_h x_t

Shapes follow transformers' `Mamba2Mixer` and mamba-ssm's `mamba_chunk_scan_combined`:
x [b, T, h, p]; dt [b, T, h] (after softplus and clamping); A [h]; B, C [b, T, g, n] with
h % g == 0 (head i reads group i // (h // g)); D [h]; states [b, h, p, n].

Inside a chunk the scan is one masked "attention" product, L (.) (C B^T) (the SSD dual form);
chunks are linked by a short loop over the states at chunk boundaries. T need not be a multiple of
the chunk size (the last chunk is zero-padded: decay 1, input 0).

Why a custom autograd function: with dt, A, B and C constant (MambaLRP's ssm rule) the scan is
linear in x and in the initial state, and its adjoint is the same scan run backwards in time with
B and C swapped (`_core` on flipped inputs, decays shifted by one step). So the backward stores
only dt, A, B and C and never any state. With any of them requiring a gradient (rules off:
Gradient x Input, IG, SmoothGrad) ordinary autograd runs through the chunked forward instead,
which gives the true gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 256


def ssd_scan(x, dt, A, B, C, D=None, chunk_size: int = DEFAULT_CHUNK, initial_state=None,
             return_last_state: bool = False):
    """y [b, T, h, p] (and the last state [b, h, p, n] with return_last_state); see the module docstring."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    h, g = x.shape[2], B.shape[2]
    if h % g:
        raise ValueError(f"{h} heads cannot be split into {g} groups")
    log_decay = dt * A  # [b, T, h]
    u = x * dt[..., None]
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], h, x.shape[3], B.shape[3])
    if any(t.requires_grad for t in (dt, A, B, C)):
        y, last = _core(u, log_decay, B, C, initial_state, chunk_size)
    else:
        y, last = _LinearSSD.apply(u, log_decay, B, C, initial_state, int(chunk_size))
    if D is not None:
        y = y + x * D[:, None]
    return (y, last) if return_last_state else y


def _core(u, a, B, C, s0, chunk):
    """y_t = sum_{s<=t} exp(a_{s+1} + ... + a_t) (C_t . B_s) u_s + exp(a_0 + ... + a_t) s0 C_t.

    u [b, T, h, p] (the input already times dt), a [b, T, h] (log decay), B, C [b, T, g, n],
    s0 [b, h, p, n]. Returns (y [b, T, h, p], last state [b, h, p, n]). Differentiable by autograd.
    """
    b, T, h, p = u.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    pad = (-T) % chunk
    Q = min(chunk, T + pad)
    if pad:
        u, a, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (u, a, B, C))
    c = (T + pad) // Q
    u = u.reshape(b, c, Q, g, r, p)
    a = a.reshape(b, c, Q, g, r)
    B = B.reshape(b, c, Q, g, n)
    C = C.reshape(b, c, Q, g, n)

    cum = a.cumsum(2)  # [b, c, Q, g, r]: log decay from the chunk's start to step l
    # intra-chunk weights exp(cum_l - cum_s) (C_l . B_s) for s <= l, built in place (the largest
    # tensor here, [b, c, g, r, Q, Q]); the acausal half is set to -inf before exp
    lead = cum.permute(0, 1, 3, 4, 2)  # [b, c, g, r, Q]
    weights = lead[..., :, None] - lead[..., None, :]  # [b, c, g, r, l, s]
    causal = torch.ones(Q, Q, dtype=torch.bool, device=u.device).tril()
    weights = weights.masked_fill_(~causal, float("-inf")).exp_()
    scores = torch.einsum("bclgn,bcsgn->bcgls", C, B)[:, :, :, None]  # C_l . B_s per group
    # in place unless autograd runs through here (exp's backward needs its output)
    weights = weights * scores if torch.is_grad_enabled() else weights.mul_(scores)
    y = torch.einsum("bcgrls,bcsgrp->bclgrp", weights, u)
    del weights

    # each chunk's own contribution to the state at its end, then the states entering each chunk
    to_end = (cum[:, :, -1:] - cum).exp_()  # [b, c, Q, g, r]
    chunk_states = torch.einsum("bclgn,bclgrp->bcgrpn", B, u * to_end[..., None])
    chunk_decay = cum[:, :, -1].exp()  # [b, c, g, r]
    s = s0.reshape(b, g, r, p, n)
    entering = []
    for k in range(c):
        entering.append(s)
        s = torch.addcmul(chunk_states[:, k], chunk_decay[:, k, :, :, None, None], s)
    entering = torch.stack(entering, dim=1)  # [b, c, g, r, p, n]
    y = y.addcmul_(torch.einsum("bclgn,bcgrpn->bclgrp", C, entering), cum.exp_()[..., None])
    y = y.reshape(b, c * Q, h, p)[:, :T]
    return y, s.reshape(b, h, p, n)


class _LinearSSD(torch.autograd.Function):
    """`_core` for constant a, B, C: the backward is `_core` in reversed time.

    With t' = T-1-t the adjoint of y_t = sum_{s<=t} exp(a_{s+1..t}) (C_t.B_s) u_s reads
    du_s = sum_{t>=s} exp(a_{s+1..t}) (B_s.C_t) dy_t: a forward scan over flipped dy with B and C
    swapped and the decays shifted by one step (a'_{t'} = a_{t+1}, a'_0 = 0). Its initial state is
    the gradient of the last state, and its last state, times exp(a_0), is the gradient of s0.
    """

    @staticmethod
    def forward(ctx, u, a, B, C, s0, chunk):
        ctx.save_for_backward(a, B, C)
        ctx.chunk = chunk
        return _core(u, a, B, C, s0, chunk)

    @staticmethod
    def backward(ctx, dy, dlast):
        a, B, C = ctx.saved_tensors
        if dy is None:
            dy = a.new_zeros(a.shape[0], a.shape[1], a.shape[2], dlast.shape[2])
        if dlast is None:
            dlast = dy.new_zeros(dy.shape[0], dy.shape[2], dy.shape[3], B.shape[3])
        shifted = F.pad(a.flip(1)[:, :-1], (0, 0, 1, 0))  # a'_0 = 0, a'_j = a_{T-j}
        du, ds = _core(dy.flip(1), shifted, C.flip(1), B.flip(1), dlast, ctx.chunk)
        return du.flip(1), None, None, None, ds * a[:, 0, :, None, None].exp(), None


def reference_ssd(x, dt, A, B, C, D=None, initial_state=None):
    """The recurrence step by step with autograd: slow, obviously right; for tests. -> (y, last state)."""
    b, T, h, p = x.shape
    r = h // B.shape[2]
    Bh, Ch = B.repeat_interleave(r, dim=2), C.repeat_interleave(r, dim=2)  # [b, T, h, n]
    s = x.new_zeros(b, h, p, B.shape[3]) if initial_state is None else initial_state
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        s = decay * s + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((s * Ch[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    return (y if D is None else y + x * D[:, None]), s


def cuda_chunk_scan():
    """mamba-ssm's `mamba_chunk_scan_combined`, or None when it is not installed (or not loadable)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # ImportError, or a wheel built for another torch
        return None
    return mamba_chunk_scan_combined


def kernel_ssd_scan(x, dt, A, B, C, D=None, chunk_size: int = DEFAULT_CHUNK, initial_state=None,
                    return_last_state: bool = False, kernel=None):
    """`ssd_scan` through mamba-ssm's Triton kernel (CUDA). dt must already be softplus'ed and clamped:
    the kernel's own softplus and limits stay off. With dt, A, B, C and D constant (the ssm rule) the
    backward is one more forward call of the kernel (`_KernelLinearSSD`) instead of its own backward,
    which would also compute the gradients of dt, A, B, C and D. `kernel`: a stand-in with the
    kernel's signature (tests); default mamba-ssm's `mamba_chunk_scan_combined`."""
    fn = kernel or cuda_chunk_scan()
    if fn is None:
        raise RuntimeError("the CUDA SSD scan needs mamba-ssm: pip install 'mambalrp_tools[gpu]'")
    if any(t is not None and t.requires_grad for t in (dt, A, B, C, D)):
        y, last = fn(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state, dt_softplus=False,
                     return_final_states=True)
    else:
        y, last = _KernelLinearSSD.apply(fn, x, dt, A, B, C, D, initial_state, int(chunk_size))
    return (y, last) if return_last_state else y


#: the adjoint's first step must neither decay its state (a'_0 = 0) nor lose its input, yet the kernel
#: scales each step's input by the same dt' that sets its decay: a dt' this small decays by exactly 1.0
#: in float32 (for |A| < 3e4) and is divided out of the input beforehand; a smaller dt is raised to it
#: (its decay is 1.0 either way)
_TINY_DT = 1e-12


class _KernelLinearSSD(torch.autograd.Function):
    """The kernel's scan for constant dt, A, B, C, D, with `_LinearSSD`'s adjoint run by the kernel.

    The kernel computes s_j = exp(dt'_j A) s_{j-1} + dt'_j x'_j B'_j, y'_j = s_j C'_j. The adjoint
    (see `_LinearSSD`) is that scan over reversed time with B and C swapped and decays shifted by one
    step, so dt'_j = dt_{T-j} (j >= 1), dt'_0 = _TINY_DT, and input x'_j = flip(dy)_j / dt'_j.
    """

    @staticmethod
    def forward(ctx, fn, x, dt, A, B, C, D, s0, chunk):
        ctx.set_materialize_grads(False)  # an unused last state costs nothing (dlast None)
        ctx.save_for_backward(dt, A, B, C, D)
        ctx.fn, ctx.chunk, ctx.has_s0 = fn, chunk, s0 is not None
        return fn(x, dt, A, B, C, chunk, D=D, initial_states=s0, dt_softplus=False, return_final_states=True)

    @staticmethod
    def backward(ctx, dy, dlast):
        dt, A, B, C, D = ctx.saved_tensors
        if dy is None and dlast is None:
            return (None,) * 9
        if dy is None:
            dy = dt.new_zeros(*dt.shape, dlast.shape[2])
        dt_rev = F.pad(dt.flip(1)[:, :-1], (0, 0, 1, 0), value=_TINY_DT).clamp_min(_TINY_DT)
        du, ds = ctx.fn(dy.flip(1) / dt_rev[..., None], dt_rev, A, C.flip(1), B.flip(1), ctx.chunk,
                        D=None, initial_states=dlast, dt_softplus=False, return_final_states=True)
        flipped = du.flip(1)
        dx = flipped * dt[..., None] if D is None else torch.addcmul(dy * D[:, None], flipped, dt[..., None])
        ds0 = ds * (dt[:, 0] * A).exp()[..., None, None] if ctx.has_s0 else None
        return None, dx, None, None, None, None, None, ds0, None
