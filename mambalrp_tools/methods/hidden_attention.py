"""Mamba's hidden attention (Ali, Zimerman & Wolf 2024, arXiv 2403.01590) and the two baselines built on it.

Unrolling the selective scan of one layer, channel d, gives y_t - D u_t = sum_{s<=t} alpha_d[t, s] u_s with

    alpha_d[t, s] = sum_n C_t[n] * prod_{k=s+1..t} Abar_k[d, n] * Bbar_s[d, n],
    Abar_k = exp(delta_k[d] A[d, n]),  Bbar_s = delta_s[d] B_s[n].

The layer's hidden attention is alpha averaged over the channels d (signed: C . Bbar can be negative).

How it is computed without O(T^3) loops or a [d_inner, T, T] tensor: with S_t = sum_{k<=t} delta_k
(cumulative log-decay, kept in float64), prod_{k=s+1..t} Abar_k = exp(A (S_t - S_s)). For a tile of
rows [t0, t1) and earlier columns s < t0 the product splits at the reference step r = t0 - 1 into
exp(A (S_t - S_r)) * exp(A (S_r - S_s)), both exponents <= 0 (no overflow), so the channel-averaged
tile is one matrix product over the flattened (d, n) axis:

    alpha[t, s] = (1/d_inner) sum_{d,n} Q[t, d, n] K[s, d, n],
    Q = C_t exp(A (S_t - S_r)),  K = delta_s B_s exp(A (S_r - S_s)).

Diagonal tiles are split in halves level by level (each lower-left quarter is such a product, all of
one level batched together) down to a few rows, which are computed directly. Temporaries are [batch, rows, d_inner, n] with `rows` chosen
from a memory budget, so memory is O(T * block) for the attention rows and independent of T otherwise.

`attention_rollout` and `mamba_attr` need only the explained row of a product of row-normalised
matrices, so they push one row vector through the layers (last to first), one block of rows at a time.

Two variants of each (`variant=`), transcribed from the authors' code (github AmeenAli/HiddenMambaAttn,
`vim/xai_utils.py` on the per-channel matrices of their mamba-ssm fork's `compute_attn_matrix_fn`):

- "official": rollout uses the signed channel mean (its row sums are signed too); Mamba-Attr
  clamps each channel's alpha at 0, min-max normalises it over (channels, tokens), then averages the
  channels and scales column s by the gradient weight; the final row is clamped at 0, as theirs is.
- "abs": this project's earlier variant, |signed channel mean| for both, no min-max: a distribution.

Both use the layers from `start_layer` on (theirs: 15 of Vim-S's 24) and the same exact per-layer alpha.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..architectures import LayerSSM, architecture_of, eval_mode
from ..backends import free_gpu_memory
from ..rules import Rules
from .base import Query, register

#: elements per [batch, rows, d_inner, n] temporary (32 MiB in float32) on a CPU
BUDGET = 1 << 23
#: on a GPU: at most this many (256 MiB in float32), and at most 1/GPU_BUDGET_SHARE of the free memory.
#: Larger tiles mean fewer, larger kernels: at the CPU budget a 130m-sized model's rollout at 1,024
#: tokens launched ~28,000 small operations, 1.68 s of wall time for 0.38 s on an H200
#: (benchmarks/results/h200_2026-12-01.md)
GPU_BUDGET = 1 << 26
GPU_BUDGET_SHARE = 64
#: diagonal tiles at most this many rows wide are computed directly
LEAF = 8
#: most rows per block (larger blocks recompute the keys' decays less often)
MAX_BLOCK = 512


class _Tiler:
    """Channel-averaged hidden attention of one layer, computed tile by tile.

    clamp=False: the signed channel mean of alpha. clamp=True: the mean over channels of max(alpha_d, 0),
    and `peak` [b] collects max over (channels, tokens) of max(alpha_d, 0) over the rows computed so far.
    """

    def __init__(self, layer: LayerSSM, budget: int = BUDGET, leaf: int = LEAF, clamp: bool = False):
        self.delta, self.A, self.B, self.C = layer.delta, layer.A, layer.B, layer.C
        if layer.mask is not None:  # alpha[:, s] is linear in B_s: a zero B_s is a zeroed padded column
            self.B = self.B * layer.mask[:, None, :].to(self.B.dtype)
        self.dtype = layer.delta.dtype
        # float64: differences of a long cumulative sum keep their precision
        self.S = layer.delta.double().cumsum(-1)
        b, d, _ = layer.delta.shape
        self.d = d
        self.budget = budget
        self.clamp = clamp
        self.peak = layer.delta.new_zeros(b)
        self.rows_fit = max(1, budget // (b * d * self.A.shape[1]))  # rows per [b, rows, d, n] temporary
        self.leaf = max(1, min(leaf, int(self.rows_fit**0.5)))  # a direct tile is [b, d, L, L, n]

    def _attend(self, q, k):
        """q [N, L, d, n], k [N, M, d, n] -> ([N, L, M] channel mean of sum_n q k, peak [N] or None).

        Under clamp each channel is clamped at 0 before the mean (channels a chunk at a time, so the
        per-channel [N, chunk, L, M] temporary stays within the budget) and its maximum is returned.
        """
        N, L, d, n = q.shape
        M = k.shape[1]
        if not self.clamp:
            return torch.bmm(q.reshape(N, L, d * n), k.reshape(N, M, d * n).transpose(1, 2)) / d, None
        out = q.new_zeros(N, L, M)
        peak = q.new_zeros(N)
        step = max(1, self.budget // (N * L * M))
        for c0 in range(0, d, step):
            a = torch.einsum("xtcn,xscn->xcts", q[:, :, c0 : c0 + step], k[:, :, c0 : c0 + step]).clamp_(min=0)
            out += a.sum(1)
            peak = torch.maximum(peak, a.amax((1, 2, 3)))
        return out / d, peak

    def _decay(self, dS):
        """exp(A * dS) for dS [b, d, L] >= 0 -> [b, L, d, n] (<= 1: never overflows)."""
        return (dS.to(self.dtype).transpose(1, 2).unsqueeze(-1) * self.A).exp_()  # in place: these are the big temporaries

    def queries(self, t0, t1, ref):
        """Q[t] = C_t * exp(A (S_t - S_ref)) for rows [t0, t1): [b, L, d, n]."""
        q = self._decay(self.S[:, :, t0:t1] - self.S[:, :, ref : ref + 1])
        return q.mul_(self.C[:, :, t0:t1].transpose(1, 2).unsqueeze(2))

    def keys(self, s0, s1, ref):
        """K[s] = delta_s B_s exp(A (S_ref - S_s)) for columns [s0, s1), s1 <= ref + 1: [b, L, d, n]."""
        k = self._decay(self.S[:, :, ref : ref + 1] - self.S[:, :, s0:s1])
        k.mul_(self.delta[:, :, s0:s1].transpose(1, 2).unsqueeze(-1))
        return k.mul_(self.B[:, :, s0:s1].transpose(1, 2).unsqueeze(2))

    def _record(self, peak):
        if peak is not None:
            self.peak = torch.maximum(self.peak, peak)

    def off_diagonal(self, q, t0, s0, s1):
        """Tile rows (those of `q`, computed with ref = t0 - 1) x columns [s0, s1), s1 <= t0."""
        out = []
        step = self.rows_fit
        for c0 in range(s0, s1, step):
            c1 = min(c0 + step, s1)
            tile, peak = self._attend(q, self.keys(c0, c1, t0 - 1))
            self._record(peak)
            out.append(tile)
        return torch.cat(out, dim=-1)

    def diagonal(self, t0, t1):
        """The lower-triangular tile rows x columns [t0, t1): [b, L, L].

        The tile is padded to leaf * 2^k steps (padding: delta = B = C = 0, so it adds nothing). Level by
        level, every lower-left quarter of the 2h-wide sub-tiles on the diagonal is one batched product
        (reference step: the last of its first half); the leaf-wide tiles on the diagonal are direct.
        So a tile costs O(log) batched operations, not one per leaf.
        """
        L = t1 - t0
        leaf = min(self.leaf, L)
        size = leaf
        while size < L:
            size *= 2
        S, delta, B, C = self._padded(t0, t1, size)
        b = S.shape[0]
        out = delta.new_zeros(b, size, size)
        h = leaf
        while h < size:
            nt = size // (2 * h)
            Sv = S.view(b, self.d, nt, 2, h)
            first, second = Sv[:, :, :, 0], Sv[:, :, :, 1]
            ref = first[..., -1:]
            q = self._decay4(second - ref)  # [b, nt, h, d, n]
            q.mul_(C.view(b, -1, nt, 2, h)[:, :, :, 1].permute(0, 2, 3, 1).unsqueeze(3))
            k = self._decay4(ref - first)
            k.mul_(delta.view(b, self.d, nt, 2, h)[:, :, :, 0].permute(0, 2, 3, 1).unsqueeze(-1))
            k.mul_(B.view(b, -1, nt, 2, h)[:, :, :, 0].permute(0, 2, 3, 1).unsqueeze(3))
            tiles, peak = self._attend(q.flatten(0, 1), k.flatten(0, 1))
            self._record(None if peak is None else peak.view(b, nt).amax(1))
            sub = torch.diagonal(out.view(b, nt, 2, h, nt, 2, h), dim1=1, dim2=4)  # [b, 2, h, 2, h, nt] view
            sub[:, 1, :, 0] = tiles.view(b, nt, h, h).permute(0, 2, 3, 1)
            h *= 2
        self._leaves(out, S, delta, B, C, leaf)
        return out[:, :L, :L]

    def _padded(self, t0, t1, size):
        """S, delta, B, C of steps [t0, t1), padded to `size` steps with delta = B = C = 0."""
        pad = size - (t1 - t0)
        S, delta, B, C = (x[..., t0:t1] for x in (self.S, self.delta, self.B, self.C))
        if pad:
            S = torch.cat([S, S[..., -1:].expand(*S.shape[:-1], pad)], -1)  # delta = 0: no decay
            delta, B, C = (torch.nn.functional.pad(x, (0, pad)) for x in (delta, B, C))
        return S.contiguous(), delta.contiguous(), B.contiguous(), C.contiguous()

    def _decay4(self, dS):
        """exp(A * dS) for dS [b, d, nt, h] >= 0 -> [b, nt, h, d, n]."""
        return (dS.to(self.dtype).permute(0, 2, 3, 1).unsqueeze(-1) * self.A).exp_()

    def _leaves(self, out, S, delta, B, C, leaf):
        """Fill the leaf-wide tiles on the diagonal of `out` [b, size, size] directly, a group at a time."""
        b, size = out.shape[0], out.shape[-1]
        nl = size // leaf
        diag = torch.diagonal(out.view(b, nl, leaf, nl, leaf), dim1=1, dim2=3)  # [b, leaf, leaf, nl] view
        causal = torch.ones(leaf, leaf, dtype=torch.bool, device=out.device).tril()
        group = max(1, self.rows_fit // (leaf * leaf))  # leaves per [b, d, g, leaf, leaf, n] temporary
        Sv, dv = S.view(b, self.d, nl, leaf), delta.view(b, self.d, nl, leaf)
        Bv, Cv = B.view(b, -1, nl, leaf), C.view(b, -1, nl, leaf)
        for g0 in range(0, nl, group):
            g1 = min(g0 + group, nl)
            s = Sv[:, :, g0:g1]
            dS = s.unsqueeze(-1) - s.unsqueeze(-2)  # [b, d, g, t, s] = S_t - S_s
            # clamp the acausal half (it would overflow) before exp; it is zeroed below
            decay = (dS.clamp(min=0).to(self.dtype).unsqueeze(-1) * self.A[None, :, None, None, None]).exp_()
            Bbar = dv[:, :, g0:g1, :, None] * Bv[:, None, :, g0:g1].permute(0, 1, 3, 4, 2)  # [b, d, g, s, n]
            if self.clamp:
                per_channel = torch.einsum("bngt,bdgtsn,bdgsn->bdtsg", Cv[:, :, g0:g1], decay, Bbar)
                per_channel = (per_channel * causal[..., None]).clamp_(min=0)
                self._record(per_channel.amax((1, 2, 3, 4)))
                alpha = per_channel.mean(1)
            else:
                alpha = torch.einsum("bngt,bdgtsn,bdgsn->btsg", Cv[:, :, g0:g1], decay, Bbar) / self.d
                alpha = alpha * causal[..., None]
            diag[..., g0:g1] = alpha

    def rows(self, t0, t1):
        """alpha[:, t0:t1, :t1] averaged over channels (signed, or clamped per channel); padded columns 0."""
        b = self.delta.shape[0]
        out = self.delta.new_zeros(b, t1 - t0, t1)
        if t0 > 0:
            out[:, :, :t0] = self.off_diagonal(self.queries(t0, t1, t0 - 1), t0, 0, t0)
        out[:, :, t0:] = self.diagonal(t0, t1)
        return out

    def row_blocks(self, end: int, block: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(t0, t1, alpha[:, t0:t1, :t1]) for row blocks covering [0, end)."""
        if block is None:  # leaf * 2^k: the diagonal tiles then need no padding
            block = self.leaf
            while 2 * block <= min(MAX_BLOCK, self.rows_fit):
                block *= 2
        for t0 in range(0, end, block):
            t1 = min(t0 + block, end)
            yield t0, t1, self.rows(t0, t1)


def budget_for(device, free_bytes: int | None = None) -> int:
    """Elements per tiling temporary on `device`: BUDGET on a CPU; on a GPU up to GPU_BUDGET, within
    1/GPU_BUDGET_SHARE of its free memory (several temporaries of this size live at once)."""
    device = torch.device(device)
    if device.type != "cuda":
        return BUDGET
    if free_bytes is None:
        free_bytes = free_gpu_memory(device)
    return max(BUDGET, min(GPU_BUDGET, free_bytes // GPU_BUDGET_SHARE // 4))


def attention_matrix(layer: LayerSSM, budget: int = BUDGET, leaf: int = LEAF) -> torch.Tensor:
    """The full [b, T, T] hidden attention of one layer (signed, channel-averaged, lower triangular)."""
    b, T = _batch_and_length(layer)
    out = layer.A.new_zeros(b, T, T)
    for t0, t1, rows in _row_blocks(layer, T, None, budget, leaf):
        out[:, t0:t1, :t1] = rows
    return out


def _row_blocks(layer, end, block, budget, leaf):
    """(t0, t1, rows) of a layer's hidden attention: tiled here for a `LayerSSM` (Mamba-1's scan form;
    budget and leaf apply), by the layer's own object otherwise (e.g. Mamba-2's per-head attention)."""
    if isinstance(layer, LayerSSM):
        return _Tiler(layer, budget, leaf).row_blocks(end, block)
    return layer.row_blocks(end, block)


def _batch_and_length(layer) -> tuple[int, int]:
    if isinstance(layer, LayerSSM):
        return layer.delta.shape[0], layer.delta.shape[-1]
    return layer.batch, layer.seq_len


def capture_layers(query, grad: bool = False):
    """Run the model once (true values) and return each layer's `LayerSSM`.

    With grad=True (needs `query.target`) also returns df/d(block output) per layer [b, T, hidden]:
    block l's output is its input plus its mixer's output, so this is the gradient of f w.r.t. the
    mixer's output.
    """
    arch = architecture_of(query.model)
    mixers = [arch.mixer(layer) for layer in arch.layers(query.model)]
    inputs, outputs, handles = [], [], []

    def pre_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs.append((module, hidden.detach(), kwargs.get("attention_mask")))

    def post_hook(module, args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    for mixer in mixers:
        handles.append(mixer.register_forward_pre_hook(pre_hook, with_kwargs=True))
        if grad:
            handles.append(mixer.register_forward_hook(post_hook))
    grads = None
    try:
        embeds = query.embeddings().requires_grad_(grad)
        with query.patched(Rules.none()), torch.set_grad_enabled(grad):
            if grad:
                f = query.forward_func(embeds, *query.forward_args)
                grads = torch.autograd.grad(f.sum(), outputs)
            else:  # the backbone alone: no head, no target needed
                query.model.base_model(inputs_embeds=embeds, attention_mask=query.attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if len(inputs) != len(mixers):
        raise RuntimeError(f"captured {len(inputs)} mixer calls for {len(mixers)} layers")
    layers = [arch.scan_quantities(m, h, mask) for m, h, mask in inputs]
    return (layers, [g.detach() for g in grads]) if grad else layers


def hidden_attention(model, input_ids, attention_mask=None) -> torch.Tensor:
    """Every layer's hidden attention, [n_layers, batch, T, T] on CPU (signed, averaged over channels).

    Row t holds how much each earlier token s feeds the layer's scan output at t (columns of padded
    positions are 0). Memory O(n_layers * T^2): for long inputs use the methods, which need one row only.
    """
    ids = torch.as_tensor(input_ids).long()
    ids = ids[None] if ids.dim() == 1 else ids
    device = next(model.parameters()).device
    mask = None if attention_mask is None else torch.as_tensor(attention_mask).reshape(ids.shape).to(device)
    query = Query(model, ids.to(device), mask, None, None, -1)
    with eval_mode(model):
        return torch.stack([attention_matrix(layer).cpu() for layer in capture_layers(query)])


#: how each layer's rows enter the rollout: |signed mean|, signed mean, or clamped per channel and min-max'd
ATTENTIONS = ("abs", "signed", "clamped")
VARIANTS = ("official", "abs")


def rollout_row(layers: list[LayerSSM], position: int, column_weights=None, block: int | None = None,
                budget: int | None = None, leaf: int = LEAF, attention: str = "abs") -> torch.Tensor:
    """Row `position` of prod_l rownorm(a_l * w_l + I) (last layer first), [b, T].

    a_l by `attention`: "abs" |alpha_l| (rows then sum to 1), "signed" alpha_l, "clamped" the mean over
    channels of max(alpha_l,d, 0) divided by its max over (channels, tokens up to `position`), i.e. the
    authors' min-max (the min is 0: the causal matrix's upper triangle; a lone token scores 1 anyway).
    alpha_l is the signed channel mean. column_weights: optional per layer [b, T] factors multiplied into
    the columns (mamba_attr). Computed as r <- r @ Ahat_l, one block of rows of Ahat_l at a time; only
    positions <= `position` matter. budget: elements per tiling temporary (None: `budget_for` the
    layers' device).
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, not {attention!r}")
    b, T = _batch_and_length(layers[0])
    p = position % T
    r = layers[0].A.new_zeros(b, p + 1)
    budget = budget_for(r.device) if budget is None else budget
    r[:, p] = 1
    for i in reversed(range(len(layers))):
        weight = None if column_weights is None else column_weights[i]
        blocks, scale = _layer_rows(layers[i], p + 1, block, budget, leaf, attention == "clamped")
        new = torch.zeros_like(r)
        for t0, t1, rows in blocks:
            coeff = r[:, t0:t1]
            if not bool(coeff.any()):
                continue  # rows nothing flows through (e.g. padding)
            a = rows.abs() if attention == "abs" else rows
            if scale is not None:
                a = a * scale[:, None, None]
            if weight is not None:
                a = a * weight[:, None, :t1]
            diag = torch.arange(t1 - t0, device=a.device)
            a[:, diag, t0 + diag] += 1
            a = a / a.sum(-1, keepdim=True)
            new[:, :t1] += torch.einsum("bt,bts->bs", coeff, a)
        r = new
    return torch.nn.functional.pad(r, (0, T - p - 1))


def _layer_rows(layer, end, block, budget, leaf, clamp):
    """(row blocks of layer's attention over [0, end), per-sample scale or None).

    Under clamp the min-max needs the maximum over all rows before any row is used: the rows are kept
    from that first pass when they fit the budget, and computed again otherwise.
    """
    def rows():  # (object whose `peak` the pass fills, a fresh pass over the row blocks)
        if isinstance(layer, LayerSSM):
            tiler = _Tiler(layer, budget, leaf, clamp=clamp)
            return tiler, tiler.row_blocks(end, block)
        return layer, layer.row_blocks(end, block, clamp=clamp)  # the layer's own object (Mamba-2: per head)

    source, first = rows()
    if not clamp:
        return first, None
    keep = _batch_and_length(layer)[0] * end * end <= budget
    kept = [item for item in first] if keep else None
    if not keep:
        for _ in first:  # only the maximum is needed from this pass
            pass
    peak = source.peak
    scale = torch.where(peak > 0, 1 / peak.clamp(min=torch.finfo(peak.dtype).tiny), torch.zeros_like(peak))
    return (kept if keep else rows()[1]), scale


def _check_variant(variant):
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")


def _check_start_layer(start_layer, n_layers):
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not 0 <= start_layer < n_layers:
        raise ValueError(f"start_layer must be an int in [0, {n_layers}) for this {n_layers}-layer model, "
                         f"not {start_layer!r}")


@register("attention_rollout", aliases=("rollout",), signed=False)
def attention_rollout(query, variant: str = "official", start_layer: int = 0, block: int | None = None):
    """Attention rollout over Mamba's hidden attention: row `position` of prod_l rownorm(a_l + I).

    Layers start_layer..L-1. variant="official" (the authors' formula): a_l = alpha_l, the signed
    channel mean, and the result clamped at 0. variant="abs": a_l = |alpha_l| (non-negative, each
    sample's scores sum to 1). Padded positions get 0.
    """
    _check_variant(variant)
    query.resolve()
    layers = capture_layers(query)
    _check_start_layer(start_layer, len(layers))
    attention = "signed" if variant == "official" else "abs"
    row = rollout_row(layers[start_layer:], query.position, block=block, attention=attention)
    return row.clamp(min=0) if variant == "official" else row


@register("mamba_attr", aliases=("mambaattr",), signed=False)
def mamba_attr(query, variant: str = "official", start_layer: int = 0, block: int | None = None):
    """Mamba-Attr (Ali et al. 2024): rollout of hidden attention weighted by gradients, layers start_layer..L-1.

    Per layer: g = df/d(block output) [T, hidden]; w_s = max over hidden of ReLU(g_s), min-max normalised
    over the (real) positions up to the explained one (0 where w is constant); column s of the layer's
    attention is multiplied by w_s, then rollout as in `attention_rollout`. The attention:
    variant="official" the mean over channels of max(alpha_d, 0) min-max normalised over (channels,
    tokens), as the authors' code; variant="abs" |alpha_l| (each sample's scores then sum to 1).
    Non-negative either way.
    """
    _check_variant(variant)
    query.resolve()
    layers, grads = capture_layers(query, grad=True)
    _check_start_layer(start_layer, len(layers))
    p = query.position % query.seq_len
    mask = query.attention_mask
    valid = torch.zeros(query.input_ids.shape, dtype=torch.bool, device=query.input_ids.device)
    valid[:, : p + 1] = True
    if mask is not None:
        valid &= mask.bool()
    weights = []
    for g in grads[start_layer:]:
        w = g.float().clamp(min=0).amax(-1)  # [b, T]
        lo = w.masked_fill(~valid, float("inf")).amin(-1, keepdim=True)
        hi = w.masked_fill(~valid, float("-inf")).amax(-1, keepdim=True)
        w = ((w - lo) / (hi - lo).clamp(min=torch.finfo(w.dtype).tiny)).clamp(0, 1) * valid
        weights.append(w.to(layers[0].A.dtype))
    attention = "clamped" if variant == "official" else "abs"
    return rollout_row(layers[start_layer:], p, weights, block=block, attention=attention)
