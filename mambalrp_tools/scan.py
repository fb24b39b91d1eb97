"""Selective scan of Mamba-1 in plain PyTorch, chunked over time, with a hand-written backward.

    s_t = exp(delta_t * A) * s_{t-1} + delta_t * B_t * u_t        (per channel d and state n)
    y_t = C_t . s_t + D * u_t

Shapes follow mamba-ssm's `selective_scan_fn`: u, delta [b, d, T]; A [d, n]; B, C [b, n, T]; D [d].

Why a custom autograd function: autograd through the recurrence stores every state, O(T * d * n).
Here the forward keeps only the state at each chunk boundary; the backward recomputes one chunk at
a time and runs the adjoint recurrence

    lambda_t = exp(delta_{t+1} A) * lambda_{t+1} + C_t * dy_t,    du_t = delta_t * sum_n B_t lambda_t + D dy_t

backwards in time. When delta, B and C are detached (MambaLRP's ssm rule) only that reverse scan
runs; otherwise the gradients of delta, A, B and C are reduced from the same chunk buffers.
Inside a chunk the recurrence is one fused `addcmul` per step over a time-major buffer, which is
work-optimal and cache-friendly on CPU; memory is O(T * (d + n) + chunk * d * n).
`adjoint_by_forward_scan` runs the same reverse scan with a forward-only kernel (the CUDA backend), and
`scan_from_state` lets such a kernel, which always starts from zero, continue from a state.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 128


def selective_scan(u, delta, A, B, C, D=None, chunk_size: int = DEFAULT_CHUNK, memo=None,
                   initial_state=None, return_last_state: bool = False):
    """Run the scan. Differentiable in every argument; see the module docstring.

    memo: a `recompute.Memo` of a layer recomputed in backward: the first (no-grad) call leaves y
    there and the recomputation takes it instead of scanning again. That pays off when delta, A, B
    and C are constants (the ssm rule); otherwise the backward needs the chunk states and rescans.
    initial_state: s_{-1} [b, d, n] (zeros if None), so that a long sequence can be scanned in
    pieces; return_last_state: also return the state after the last step (as mamba-ssm does).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if D is None:
        D = torch.zeros(u.shape[1], dtype=u.dtype, device=u.device)
    if initial_state is None:
        initial_state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    y, last = _ChunkedScan.apply(u, delta, A, B, C, D, initial_state, int(chunk_size), memo)
    return (y, last) if return_last_state else y


def _chunk_inputs(u, delta, A, B, t0, t1, buffers):
    """Time-major decay and (if `buffers` has a second entry) input of one chunk, written into
    `buffers` ([chunk, b, d, n] each, allocated once per scan: fresh chunk-sized tensors every
    chunk cost page faults and fragment the host heap)."""
    L = t1 - t0
    # contiguous time-major layout: each step then reads one dense [b, d, n] slab
    dt = delta[:, :, t0:t1].permute(2, 0, 1).contiguous()  # [L, b, d]
    decay = torch.mul(dt.unsqueeze(-1), A, out=buffers[0][:L]).exp_()
    if len(buffers) == 1:
        return decay, None
    dtu = dt * u[:, :, t0:t1].permute(2, 0, 1)
    B_t = B[:, :, t0:t1].permute(2, 0, 1).contiguous().unsqueeze(2)  # [L, b, 1, n]
    return decay, torch.mul(dtu.unsqueeze(-1), B_t, out=buffers[1][:L])


def _buffers(delta, n, chunk, count):
    """`count` chunk buffers [min(chunk, T), b, d, n] for `_chunk_inputs` (1: decay only; 2: and drive)."""
    b, d, T = delta.shape
    return [delta.new_empty(min(chunk, T), b, d, n) for _ in range(count)]


def _run_states(decay, drive, s0):
    """drive[t] <- decay[t] * drive[t-1] + drive[t] in place (drive[-1] = s0): drive becomes the states.

    In place, because `addcmul_` is several times faster per step than `addcmul(..., out=)` on CPU
    (benchmarks/results/constants.md).
    """
    drive[0].addcmul_(decay[0], s0)
    for t in range(1, decay.shape[0]):
        drive[t].addcmul_(decay[t], drive[t - 1])
    return drive


def _scan(u, delta, A, B, C, D, s, chunk):
    """y [b, d, T], the state entering each chunk [chunks, b, d, n] (s first) and the last state."""
    T = u.shape[2]
    n = A.shape[1]
    y = torch.empty_like(u)
    starts = []
    buffers = _buffers(delta, n, chunk, 2)
    for t0 in range(0, T, chunk):
        t1 = min(t0 + chunk, T)
        starts.append(s)
        decay, drive = _chunk_inputs(u, delta, A, B, t0, t1, buffers)
        states = _run_states(decay, drive, s)
        y[:, :, t0:t1] = torch.einsum("lbdn,bnl->bdl", states, C[:, :, t0:t1])
        s = states[-1].clone()
    return y + u * D[:, None], torch.stack(starts), s


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, s0, chunk, memo):
        full = any(ctx.needs_input_grad[1:5])  # the backward needs the chunk states
        known = None if memo is None else memo.take("scan", u.device)
        if known is None or full:
            y, starts, last = _scan(u, delta, A, B, C, D, s0, chunk)
            if memo is not None and not torch.is_grad_enabled():
                memo.put("scan", y, last)
        else:
            (y, last), starts = known, None
        # with delta, A, B and C constant (the ssm rule) the backward needs neither u nor the states
        need_u = full or ctx.needs_input_grad[5]
        ctx.save_for_backward(u if need_u else None, delta, A, B, C, D, starts)
        ctx.chunk = chunk
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, D, starts = ctx.saved_tensors
        need_u, need_delta, need_A, need_B, need_C, need_D, need_s0, _, _ = ctx.needs_input_grad
        full = need_delta or need_A or need_B or need_C  # gradients beyond the linear path in u
        chunk = ctx.chunk
        b, d, T = delta.shape
        n = A.shape[1]
        dy = dy.contiguous()
        du = torch.empty_like(delta)
        ddelta = torch.empty_like(delta) if need_delta else None
        dB = torch.empty_like(B) if need_B else None
        dC = torch.empty_like(C) if need_C else None
        dA = torch.zeros_like(A) if need_A else None
        lam_buf, *buffers = _buffers(delta, n, chunk, 3 if full else 2)
        # d loss / d s_{t1 - 1} from later steps: exp(delta_{t1} A) * lambda_{t1}, or dlast at the end
        carry = dlast.clone()
        for k, t0 in reversed(list(enumerate(range(0, T, chunk)))):
            t1 = min(t0 + chunk, T)
            L = t1 - t0
            decay, drive = _chunk_inputs(u, delta, A, B, t0, t1, buffers)
            # source of the adjoint, C_t dy_t, for the whole chunk in one op: [L, b, d, n]
            lam = torch.mul(dy[:, :, t0:t1].permute(2, 0, 1).unsqueeze(-1), C[:, :, t0:t1].permute(2, 0, 1).unsqueeze(2),
                            out=lam_buf[:L])
            lam[L - 1] += carry
            for t in range(L - 2, -1, -1):
                # lambda_t = C_t dy_t + decay_{t+1} * lambda_{t+1}, in place
                lam[t].addcmul_(decay[t + 1], lam[t + 1])
            carry = decay[0] * lam[0]
            B_c = B[:, :, t0:t1]
            lam_B = torch.einsum("lbdn,bnl->bdl", lam, B_c)  # sum_n lambda_t B_t
            dt_c = delta[:, :, t0:t1]
            du[:, :, t0:t1] = dt_c * lam_B
            if not full:
                continue
            states = _run_states(decay, drive, starts[k])
            u_c = u[:, :, t0:t1]
            if need_C:
                dC[:, :, t0:t1] = torch.einsum("lbdn,bdl->bnl", states, dy[:, :, t0:t1])
            if need_B:
                dB[:, :, t0:t1] = torch.einsum("lbdn,bdl->bnl", lam, dt_c * u_c)
            if need_delta or need_A:
                # d loss / d(log decay_t) = lambda_t * decay_t * s_{t-1}, in place in the decay buffer
                g = decay.mul_(lam)  # [L, b, d, n]
                g[1:].mul_(states[:-1])
                g[0].mul_(starts[k])
                if need_delta:
                    ddelta[:, :, t0:t1] = torch.einsum("lbdn,dn->bdl", g, A) + u_c * lam_B
                if need_A:
                    dA += torch.einsum("lbdn,bdl->dn", g, dt_c)
        du = du + dy * D[:, None]
        dD = (dy * u).sum(dim=(0, 2)) if need_D else None
        return (du if need_u else None), ddelta, dA, dB, dC, dD, (carry if need_s0 else None), None, None


#: below this a delta underflows when it divides the adjoint's input (softplus outputs are > 0)
_SMALLEST_DELTA = 1e-30


def _loading_delta(A, dtype):
    """A step width so small that exp(delta * A) rounds to exactly 1 for every entry of A in the scan's
    arithmetic (float32 for half-precision inputs, as in mamba-ssm's kernels; else `dtype`): a step of
    that width adds delta * B_t * u_t to the state and decays nothing. Rounded to `dtype`, the width
    the kernel reads (0 where `dtype` cannot hold it: the callers then fall back)."""
    eps = min(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps)
    return float(torch.tensor(eps / 16 / max(float(A.abs().max()), 1e-30), dtype=dtype))


def _join(first, rest):
    """first and rest concatenated along time (the last dim), contiguous (what the kernels read)."""
    k = first.shape[-1]
    out = rest.new_empty(*rest.shape[:-1], k + rest.shape[-1])
    out[..., :k] = first
    out[..., k:] = rest
    return out


def scan_from_state(forward_scan, u, delta, A, B, C, D, s0, width=None):
    """(y, last state) of the scan started from s0 [b, d, n] (zeros if None), by a kernel that always
    starts from zero: `forward_scan(u, delta, A, B, C, D, return_last_state=True)` -> (y, last).

    n leading steps load s0 one state column at a time (step k: B = e_k, C = 0, u = s0[..., k] / w) with
    a width w for which exp(w A) is exactly 1 (`_loading_delta`), so after them the state is s0 and the
    sequence proceeds from it; their outputs are dropped. One kernel call over T + n steps instead of
    O(b d n T) decay sums beside it. Returns None when s0 / w would overflow u's dtype. (In bfloat16
    the loaded state carries bfloat16 rounding, as the inputs do.) `width`: w, if the caller already
    has it (computing it reads max |A| back from the device).
    """
    if s0 is None:
        return forward_scan(u, delta, A, B, C, D, return_last_state=True)
    n = A.shape[1]
    w = _loading_delta(A, u.dtype) if width is None else width
    load = (s0 / w).to(u.dtype)  # [b, d, n]: the input of loading step k is column k
    if not bool(torch.isfinite(load).all()):
        return None
    eye = torch.eye(n, dtype=B.dtype, device=B.device).expand(B.shape[0], n, n)
    y, last = forward_scan(_join(load, u), _join(torch.full_like(load, w), delta), A, _join(eye, B),
                           _join(torch.zeros_like(eye), C), D, return_last_state=True)
    return y[..., n:], last


def adjoint_by_forward_scan(forward_scan, dy, delta, A, B, C, D, dlast=None):
    """(du, ds0) of y, last = scan(u, delta, A, B, C, D, from s0) for constant delta, A, B, C (the ssm
    rule), given dy and d(last) (None: the last state is unused), computed by a forward scan, so a
    forward-only kernel can run MambaLRP's backward.

    The adjoint lambda_t = exp(delta_{t+1} A) lambda_{t+1} + C_t dy_t (lambda_{T-1} also receives
    d(last)) runs backwards in time; read in reversed time it is a selective scan with
    delta'_t = delta_{t+1}, B' = C, C' = B, input dy_t / delta_{t+1} (the scan multiplies its input by
    delta') and start state d(last) (`scan_from_state`). The last step has no successor: it gets a
    width whose decay is 1, which leaves d(last) intact. Then du_t = delta_t B_t.lambda_t + D dy_t and
    ds0 = exp(delta_0 A) lambda_0, lambda_0 being the reversed scan's last state.
    `forward_scan` as for `scan_from_state`. Returns None if some delta is too small to divide by.
    """
    w = _loading_delta(A, delta.dtype)
    delta_rev = torch.empty_like(delta)
    delta_rev[..., :1] = w
    delta_rev[..., 1:] = delta[..., 1:].flip(-1)
    if bool((delta_rev < _SMALLEST_DELTA).any()):
        return None
    u_rev = dy.flip(-1)
    u_rev /= delta_rev  # in place: one [b, d, T] temporary fewer at the backward's peak
    out = scan_from_state(forward_scan, u_rev, delta_rev, A, C.flip(-1), B.flip(-1), None, dlast, width=w)
    del u_rev, delta_rev
    if out is None:
        return None
    y_rev, lambda_0 = out
    du = dy * D[:, None].to(dy.dtype) if D is not None else torch.zeros_like(dy)
    du.addcmul_(delta, y_rev.flip(-1))
    return du, torch.exp(delta[..., :1] * A) * lambda_0
