"""Mamba-2 (transformers' `Mamba2Mixer`, SSD) with the MambaLRP rules.

The same four ideas as Mamba-1 (`mamba.py`):
- ssm rule: dt, exp(A dt), B and C are constants, so the SSD scan is linear in its input x;
- silu rule: the SiLU after the causal convolution (over x, B and C) is a * [sigmoid(a)];
- gate rule: y * SiLU(z) inside the gated RMSNorm passes half of the relevance to each factor,
  and that norm's normaliser (per group of channels) is a constant;
- norm rule: every other RMSNorm's normaliser is a constant.

The norms and the block reuse Mamba-1's replacement forwards (same attributes, same arithmetic);
the mixer forward here recomputes transformers' `Mamba2Mixer.forward` (torch path) in float32.
The scan runs in `ssd.py` (PyTorch, chunked, cheap backward under the ssm rule; chunks of
`lrp_mode`'s `chunk_size`, as for Mamba-1) or, with backend "cuda", through mamba-ssm's
`mamba_chunk_scan_combined` (chunks of the model's `config.chunk_size`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from transformers.models.mamba2.modeling_mamba2 import Mamba2Block, Mamba2Mixer, Mamba2Model, Mamba2RMSNorm

from ..backends import Backend
from ..numerics import linear, operand, upcast
from ..recompute import recomputed
from ..rules import Rules, gated_silu, rms_norm, silu, ssm
from ..ssd import cuda_chunk_scan, kernel_ssd_scan, ssd_scan
from .base import Architecture, PatchContext, Sizes
from .mamba import (
    MixerState, _last_inputs, _mask, backbone_forward, block_forward, norm_forward, uncached_mixer_forward,
)

#: floats per token, layer and inner channel that autograd keeps through one Mamba-2 layer, rounded
#: up from a measurement on the PyTorch path (benchmarks/results/constants.md)
ACTIVATION_FLOATS = 5
#: the backend of callers that name none (hidden attention)
_TORCH = Backend("torch")


def ssm_parameters(mixer, hidden_states, attention_mask, rules: Rules, conv_history=None, precision="float32",
                   backend: Backend = _TORCH):
    """Everything the SSD scan of one layer consumes, float32, with the silu and ssm rules applied.
    The convolution runs on `backend` (causal-conv1d's kernel on "cuda", channel-last, so that x, B
    and C come out of it without a copy; `Backend.conv1d` continues from a history in PyTorch).

    Returns x [b, T, h, p]; dt [b, T, h] (softplus'ed, clamped); A [h]; B, C [b, T, g, n]; D [h];
    z [b, T, d_inner] (the gate's pre-activation); xBC [b, conv_dim, T] (the convolution's input).
    """
    b, T, _ = hidden_states.shape
    h = _mask(upcast(hidden_states), attention_mask)
    projected = linear(h, mixer.in_proj.weight, mixer.in_proj.bias, precision)
    z, xBC, dt = projected.split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)
    xBC = xBC.transpose(1, 2)
    weight, bias = operand(mixer.conv1d.weight, precision), operand(mixer.conv1d.bias, precision)
    history = None if conv_history is None else conv_history.to(weight.dtype)

    # recomputed in backward: autograd keeps xBC, not also the SiLU's factor; the weights are arguments
    # so that `recomputed` also differentiates them when they need it (training through this forward)
    def conv_silu(xBC, history, conv_weight, conv_bias):
        conv = upcast(backend.conv1d(xBC.to(conv_weight.dtype), conv_weight, conv_bias, history))
        return _mask(silu(conv, rules.silu).transpose(1, 2), attention_mask)

    u = recomputed(conv_silu, xBC, history, weight, bias)
    gn = mixer.n_groups * mixer.ssm_state_size
    x, B, C = u.split([mixer.intermediate_size, gn, gn], dim=-1)
    lo, hi = mixer.time_step_limit
    dt = F.softplus(dt + upcast(mixer.dt_bias)).clamp(min=lo, max=hi)
    A = -torch.exp(upcast(mixer.A_log))
    B = B.reshape(b, T, mixer.n_groups, mixer.ssm_state_size)
    C = C.reshape(b, T, mixer.n_groups, mixer.ssm_state_size)
    dt, A, B, C, D = ssm(dt, A, B, C, upcast(mixer.D), rules.ssm)
    x = x.reshape(b, T, mixer.num_heads, mixer.head_dim)
    return x, dt, A, B, C, D, z, xBC


def gated_norm(norm, y, z, rules: Rules):
    """transformers' `MambaRMSNormGated`: RMS-normalise y * SiLU(z) per group of channels, times weight
    (gate rule on the product, silu rule on SiLU(z), norm rule on the normaliser)."""
    g = gated_silu(y, z, rules)
    # transformers before 5.2x normalised over all channels at once (no `group_size`): follow the
    # installed version, whose forward is the one being explained
    grouped = g.unflatten(-1, (-1, getattr(norm, "group_size", norm.weight.shape[-1])))
    normed = rms_norm(grouped, None, norm.variance_epsilon, rules.norm).flatten(-2)
    return normed * upcast(norm.weight)


def scan(mixer, x, dt, A, B, C, D, backend: Backend, initial_state=None):
    """(y [b, T, h, p], last state [b, h, p, n]) on the PyTorch path (chunks of `backend.chunk_size`
    steps) or the CUDA path (mamba-ssm's kernel, chunks of the model's `chunk_size`; PyTorch where
    mamba-ssm lacks the SSD kernel); the chunking changes no value beyond float rounding."""
    if backend.name == "cuda" and cuda_chunk_scan() is not None:
        return kernel_ssd_scan(x, dt, A, B, C, D, mixer.chunk_size, initial_state, return_last_state=True)
    return ssd_scan(x, dt, A, B, C, D, backend.chunk_size, initial_state, return_last_state=True)


def mixer_core(mixer, hidden_states, attention_mask, rules: Rules, backend: Backend,
               state: MixerState | None = None, precision="float32"):
    """One Mamba-2 mixer: [b, T, hidden] -> ([b, T, hidden] float32, MixerState to continue from)."""
    x, dt, A, B, C, D, z, xBC = ssm_parameters(mixer, hidden_states, attention_mask, rules,
                                               None if state is None else state.conv, precision, backend)
    y, last = scan(mixer, x, dt, A, B, C, D, backend, None if state is None else state.ssm)
    g = gated_norm(mixer.norm, y.flatten(2), z, rules)
    out = linear(g, mixer.out_proj.weight, mixer.out_proj.bias, precision)
    history = None if state is None else state.conv
    return out, MixerState(_last_inputs(xBC, history, mixer.conv_kernel_size), last)


#: replacement for `Mamba2Mixer.forward` (its scan carries the state itself: no memo)
mixer_forward = uncached_mixer_forward(
    lambda mixer, h, mask, ctx, memo, state: mixer_core(mixer, h, mask, ctx.rules, ctx.backend, state, ctx.precision))


def mamba2_block_forward(block, ctx: PatchContext):
    """Mamba-1's block (`x + mixer(norm(x))`, recomputation in pieces): the Mamba-2 mixer carries its
    state on every backend (mamba-ssm's SSD kernel starts from a given state), so the block runs on
    a PyTorch-like context and always recomputes in pieces."""
    return block_forward(block, dataclasses.replace(ctx, backend=Backend("torch", ctx.backend.chunk_size)))


# --------------------------------------------------------------------------- hidden attention

class LayerAttention:
    """Hidden attention of one Mamba-2 layer: with a scalar decay per head,

        alpha_h[t, s] = exp(A_h (S_t - S_s)) dt_s (C_t . B_s),   S_t = dt_1 + ... + dt_t (head h),

    so that y_t - D x_t = sum_{s<=t} alpha_h[t, s] x_s for every channel of head h. The layer's
    attention is alpha averaged over heads (= over channels, since a head's channels share it).
    Computed a block of rows at a time: O(heads x rows x T) memory per block.
    """

    def __init__(self, mixer, hidden_states, attention_mask=None):
        with torch.no_grad():
            x, dt, A, B, C, D, _, _ = ssm_parameters(mixer, hidden_states, attention_mask, Rules.none())
        self.x, self.dt, self.A, self.B, self.C, self.D = x, dt, A, B, C, D
        self.S = dt.double().cumsum(1)  # float64: differences of a long cumulative sum stay precise
        self.mask = attention_mask
        self.heads_per_group = x.shape[2] // B.shape[2]

    @property
    def seq_len(self) -> int:
        return self.dt.shape[1]

    @property
    def batch(self) -> int:
        return self.dt.shape[0]

    def head_rows(self, t0, t1):
        """alpha_h[:, t0:t1, :t1] per head: [b, h, t1 - t0, t1] (signed; padded columns zeroed)."""
        r = self.heads_per_group
        scores = torch.einsum("btgn,bsgn->bgts", self.C[:, t0:t1], self.B[:, :t1])
        scores = scores.repeat_interleave(r, dim=1)  # [b, h, L, t1]
        dS = self.S[:, t0:t1, None, :] - self.S[:, None, :t1, :]  # [b, L, t1, h]
        causal = torch.arange(t0, t1, device=dS.device)[:, None] >= torch.arange(t1, device=dS.device)
        decay = (dS.clamp(min=0).to(self.dt.dtype) * self.A).exp().permute(0, 3, 1, 2)
        alpha = scores * decay * self.dt[:, :t1].transpose(1, 2)[:, :, None, :] * causal
        if self.mask is not None:
            alpha = alpha * self.mask[:, None, None, :t1].to(alpha.dtype)
        return alpha

    def rows(self, t0, t1):
        """alpha[:, t0:t1, :t1] averaged over heads: [b, t1 - t0, t1]."""
        return self.head_rows(t0, t1).mean(1)

    def row_blocks(self, end: int, block: int | None = None, clamp: bool = False):
        """(t0, t1, alpha[:, t0:t1, :t1]) for row blocks covering [0, end).

        clamp: the mean over heads of max(alpha_h, 0) instead (the authors' Mamba-Attr clamps each
        channel; a head's channels share alpha_h), and `peak` [b] collects its max over (heads, tokens).
        """
        if block is None:  # about 32 MiB per [b, h, rows, T] temporary
            block = max(1, min(512, (1 << 23) // max(1, self.x.shape[0] * self.x.shape[2] * end)))
        self.peak = self.dt.new_zeros(self.batch)
        for t0 in range(0, end, block):
            t1 = min(t0 + block, end)
            if not clamp:
                yield t0, t1, self.rows(t0, t1)
                continue
            heads = self.head_rows(t0, t1).clamp(min=0)
            self.peak = torch.maximum(self.peak, heads.amax(dim=(1, 2, 3)))
            yield t0, t1, heads.mean(1)


class Mamba2(Architecture):
    """Mamba-2: `base_model.layers[i]` is a block `x + mixer(norm(x))`, then `norm_f`."""

    name = "mamba2"
    supported = "transformers' Mamba2ForCausalLM and mambalrp_tools' Mamba2Classifier"
    patch_map = {Mamba2Model: backbone_forward, Mamba2Block: mamba2_block_forward, Mamba2RMSNorm: norm_forward,
                 Mamba2Mixer: mixer_forward}  # the gated norm inside the mixer is the mixer's own business

    def layers(self, model):
        return list(model.base_model.layers)

    def mixer(self, layer):
        return layer.mixer

    def final_norm(self, model):
        return model.base_model.norm_f

    def scan_quantities(self, mixer, hidden_states, attention_mask=None) -> LayerAttention:
        return LayerAttention(mixer, hidden_states, attention_mask)

    def sizes(self, model) -> Sizes:
        config = model.config
        return Sizes(layers=config.num_hidden_layers, hidden=config.hidden_size,
                     inner=int(config.expand * config.hidden_size), state=config.state_size,
                     activation_floats=ACTIVATION_FLOATS)


MAMBA2 = Mamba2()
