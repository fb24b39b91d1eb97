"""Mamba-1 and FalconMamba (transformers' `MambaMixer`, `FalconMambaMixer`) with the MambaLRP rules.

One replacement-forward factory per module class (`MAMBA.patch_map`), installed per instance by
`architectures.lrp_mode`, and the accessors the rest of the package uses (`Mamba`). The values equal
transformers' forward to float tolerance; only the gradient flow changes where a rule is on. By
default everything is computed in at least float32, whatever the model's dtype (float64 models stay
float64), so relevance of fp16/bf16 models is as precise as for fp32 ones; `precision="model"` keeps
a bfloat16 model's activations in bfloat16 (`numerics`).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F

from transformers.models.falcon_mamba.modeling_falcon_mamba import (
    FalconMambaBlock, FalconMambaMixer, FalconMambaModel, FalconMambaRMSNorm,
)
from transformers.models.mamba.modeling_mamba import MambaBlock, MambaMixer, MambaModel, MambaRMSNorm

from .. import backends
from ..backends import Backend
from ..numerics import activation_dtype, linear, operand, project, upcast
from ..recompute import recompute, recomputed, saved_by_recipe
from ..rules import Rules, gated_silu, rms_norm, silu, ssm
from .base import Architecture, LayerSSM, PatchContext, Sizes

#: floats per token, layer and inner channel that autograd keeps through one Mamba layer (the scan's
#: output y, the gate's z and in_proj's input, half as wide), rounded up from a measurement
#: (benchmarks/results/constants.md)
ACTIVATION_FLOATS = 3
#: floats per token and inner channel that recomputing one layer and running its backward hold at
#: once, rounded up from a measurement (benchmarks/results/constants.md)
LAYER_WORKSPACE_FLOATS = 16


def norm_forward(norm, ctx: PatchContext):
    """Replacement for `MambaRMSNorm.forward` / `FalconMambaRMSNorm.forward` (norm rule)."""

    def forward(hidden_states):
        return rms_norm(hidden_states, norm.weight, norm.variance_epsilon, ctx.rules.norm)

    return forward


def _mask(x, attention_mask):
    """Zero padded positions (x: [b, T, ...]), as transformers does before and after the conv."""
    return x if attention_mask is None else x * attention_mask[:, :, None].to(x.dtype)


def _mask_channels(x, attention_mask):
    """Zero padded positions of x [b, channels, T]."""
    return x if attention_mask is None else x * attention_mask[:, None, :].to(x.dtype)


def in_projection(mixer, hidden_states, attention_mask, precision="float32"):
    """x, the masked input [b, hidden, T] of in_proj (at least float32, a view: time-major), and z = the
    gate's pre-activation [b, d_inner, T], time-major (`numerics.project`), in the activation dtype
    (`numerics.activation_dtype`). `conv_input(mixer, x)` gives the other half of in_proj's rows, the
    convolution's input. (x stays float32 under precision="model": each matmul rounds it to bf16
    itself, and the gradients of its two uses add up in float32.)"""
    x = _mask(upcast(hidden_states), attention_mask).transpose(1, 2)  # [b, hidden, T]
    d = mixer.intermediate_size
    return x, _in_proj_rows(mixer, x, slice(d, None), precision)


def conv_input(mixer, x, precision="float32"):
    """xs = in_proj's first d_inner rows applied to `in_projection`'s x: [b, d_inner, T]."""
    return _in_proj_rows(mixer, x, slice(None, mixer.intermediate_size), precision)


def _in_proj_rows(mixer, x, rows, precision):
    # two matmuls of half the rows, not one split in two: autograd's backward of a split concatenates
    # the halves' gradients, a copy of [b, 2 d_inner, T] per layer
    return project(*_rows(mixer.in_proj, rows), x, precision, activation_dtype(mixer.in_proj.weight.dtype, precision))


def _rows(linear_layer, rows):
    """(weight[rows], bias[rows] or None) of a linear layer."""
    bias = linear_layer.bias
    return linear_layer.weight[rows], None if bias is None else bias[rows]


def ssm_parameters(mixer, x, attention_mask, rules: Rules, backend: Backend, conv_history=None,
                   precision="float32", keep_less=True):
    """u, delta [b, d_inner, T]; A [d_inner, n]; B, C [b, n, T]; D [d_inner] from in_proj's input x
    (`in_projection`), with the silu, norm and ssm rules applied, and `delta_again()`, which computes
    delta once more from what the layer keeps anyway (`recompute.saved_by_recipe`). u, delta, B and
    C in the activation dtype (mamba-ssm's kernel takes them in one dtype), A and D float32.
    conv_history: the conv inputs before x's tokens (see `MixerState`).

    With `keep_less`, in_proj's convolution half, the convolution and its SiLU are recomputed in
    backward (`recompute.recomputed`): autograd keeps x (hidden = d_inner / 2 floats per token) for
    them, not the convolution's input and the SiLU's factor (2 d_inner).
    """
    act = activation_dtype(mixer.in_proj.weight.dtype, precision)
    weight, bias = operand(mixer.conv1d.weight, precision), operand(mixer.conv1d.bias, precision)
    history = None if conv_history is None else conv_history.to(weight.dtype)
    rows = slice(None, mixer.intermediate_size)

    # every tensor that may need a gradient is an argument: `recomputed` differentiates only those
    # (training through this forward needs the weights' gradients; explanations freeze them)
    def conv_silu(x, history, in_weight, in_bias, conv_weight, conv_bias):
        xs = project(in_weight, in_bias, x, precision, act)  # `conv_input`
        conv = backend.conv1d(xs.to(conv_weight.dtype), conv_weight, conv_bias, history).to(act)
        return _mask_channels(silu(conv, rules.silu), attention_mask)

    args = (x, history, *_rows(mixer.in_proj, rows), weight, bias)
    u = recomputed(conv_silu, *args) if keep_less else conv_silu(*args)
    dt, B, C = torch.split(project(mixer.x_proj.weight, None, u, precision, act),
                           [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size], dim=1)
    if hasattr(mixer, "b_layernorm"):  # FalconMamba: weightless RMS norms over the features of dt, B, C
        dt, B, C = (rms_norm(t.transpose(1, 2), None, mixer.rms_eps, rules.norm).transpose(1, 2).to(act)
                    for t in (dt, B, C))

    def delta_of(dt):  # softplus in float32, then rounded once to the activation dtype, as the scan reads it
        return F.softplus(project(mixer.dt_proj.weight, None, dt, precision)
                          + upcast(mixer.dt_proj.bias)[:, None]).to(act)

    kept_dt = dt.detach()
    A = -torch.exp(upcast(mixer.A_log))
    return (u, *ssm(delta_of(dt), A, B, C, upcast(mixer.D), rules.ssm), lambda: delta_of(kept_dt))


def selective_parameters(mixer, hidden_states, attention_mask, rules: Rules, backend: Backend):
    """Everything the scan of one layer consumes, in float32, with the silu, norm and ssm rules applied.

    Returns u, delta [b, d_inner, T]; A [d_inner, n]; B, C [b, n, T]; D [d_inner]; z [b, d_inner, T]
    (the gate's pre-activation). `Mamba.scan_quantities` reads the same quantities for hidden attention.
    """
    x, z = in_projection(mixer, hidden_states, attention_mask)
    return (*ssm_parameters(mixer, x, attention_mask, rules, backend)[:-1], z)


class MixerState(NamedTuple):
    """What a mixer carries from one piece of a sequence to the next: the last k - 1 inputs of its
    causal convolution [b, d_inner, k - 1] and the scan state [b, d_inner, n]."""

    conv: torch.Tensor
    ssm: torch.Tensor


def _last_inputs(xs, history, k):
    """The last k - 1 convolution inputs up to the end of xs (zeros before the sequence starts)."""
    seen = xs if history is None else torch.cat([history, xs], dim=-1)
    return F.pad(seen[..., -(k - 1):], (max(0, k - 1 - seen.shape[-1]), 0)).clone()


def mixer_core(mixer, hidden_states, attention_mask, rules: Rules, backend: Backend, memo=None,
               state: MixerState | None = None, precision="float32"):
    """The selective SSM block of one layer: [b, T, hidden] -> ([b, T, hidden] float32, MixerState).
    Between its projections it computes in the activation dtype (`numerics.activation_dtype`).

    `memo`: the layer's `recompute.Memo` when it is recomputed in backward. `state`: continue a
    sequence from where an earlier call on its preceding tokens ended (None: the sequence starts
    here). The returned state is None on the CUDA backend, which cannot continue from one.

    Outside a recomputed layer the layer keeps less for backward and computes the rest again there
    (`ssm_parameters`' keep_less; delta from dt). A recomputed layer (memo given) runs its backward
    right after its recomputation, so it keeps everything: recomputing inside it would save no memory.
    """
    keep_less = memo is None
    x, z = in_projection(mixer, hidden_states, attention_mask, precision)
    u, delta, A, B, C, D, delta_again = ssm_parameters(mixer, x, attention_mask, rules, backend,
                                                       None if state is None else state.conv, precision, keep_less)
    with saved_by_recipe(delta, delta_again) if keep_less else contextlib.nullcontext():
        y, last = backend.scan(u, delta, A, B, C, D, memo=memo if rules.ssm else None,
                               initial_state=None if state is None else state.ssm)
    g = gated_silu(y, z, rules)
    b, d, T = g.shape  # g's time-major layout makes its token-major view [b T, d] free
    out = linear(g.transpose(1, 2).reshape(b * T, d), mixer.out_proj.weight, mixer.out_proj.bias, precision)
    out = out.view(b, T, -1)
    if last is None:
        return out, None
    history, k = (None if state is None else state.conv), mixer.conv1d.weight.shape[-1]
    tail = conv_input(mixer, x[..., -(k - 1):], precision)  # the last k - 1 convolution inputs
    return out, MixerState(_last_inputs(tail, history, k), last)


def uncached_mixer_forward(core):
    """A mixer's replacement-forward factory around `core(mixer, hidden_states, attention_mask, ctx,
    memo, state) -> (out, MixerState)`. A cached (generation) call keeps transformers' path; with
    `return_state=True` the forward returns (output, `MixerState`) and continues from `state`."""

    def factory(mixer, ctx: PatchContext):
        original = type(mixer).forward

        def forward(hidden_states, cache=None, attention_mask=None, cache_params=None, memo=None, state=None,
                    return_state=False, **kwargs):
            cache = cache if cache is not None else cache_params
            if cache is not None:
                return original(mixer, hidden_states, cache, attention_mask=attention_mask, **kwargs)
            out, state = core(mixer, hidden_states, attention_mask, ctx, memo, state)
            return (out, state) if return_state else out

        return forward

    return factory


#: replacement for `MambaMixer.forward` / `FalconMambaMixer.forward`
mixer_forward = uncached_mixer_forward(
    lambda mixer, h, mask, ctx, memo, state: mixer_core(mixer, h, mask, ctx.rules, ctx.backend, memo, state,
                                                        ctx.precision))


def block_forward(block, ctx: PatchContext):
    """Replacement for `MambaBlock.forward`: float32 residual stream, optional recomputation
    (`ctx.checkpoint` = "device" keeps each layer's input on its device; "cpu" moves it to host memory
    when the GPU could not also recompute a layer, ~LAYER_WORKSPACE_FLOATS x d_inner floats per token)."""
    original = type(block).forward
    backend, checkpoint, slabs = ctx.backend, ctx.checkpoint, ctx.slabs

    def forward(hidden_states, cache=None, attention_mask=None, cache_params=None, **kwargs):
        cache = cache if cache is not None else cache_params
        if cache is not None:
            return original(block, hidden_states, cache, attention_mask=attention_mask, **kwargs)

        def layer(x, span=slice(None), state=None, memo=None):
            mask = None if attention_mask is None else attention_mask[:, span]
            out, state = block.mixer(block.norm(x), attention_mask=mask, memo=memo, state=state, return_state=True)
            return x + out, state

        hidden_states = upcast(hidden_states)
        if checkpoint and torch.is_grad_enabled() and hidden_states.requires_grad:
            tile = backend.recompute_tile if backend.carries_state(ctx.rules.ssm) else None
            keep_free = None
            if checkpoint == "cpu":  # room to recompute one layer (or tile) and run its backward
                tokens = hidden_states.shape[1] if tile is None else min(tile, hidden_states.shape[1])
                keep_free = hidden_states.shape[0] * tokens * LAYER_WORKSPACE_FLOATS * block.mixer.intermediate_size * 4
            return recompute(layer, hidden_states, keep_free, slabs, tile)
        return layer(hidden_states)[0]

    return forward


def backbone_forward(backbone, ctx: PatchContext):
    """Replacement for `MambaModel.forward`: a call without a cache runs uncached.

    transformers creates a cache whenever `use_cache` is on (its default in eval mode), and the
    layers then take the cached generation path, which the rules do not touch. An explanation is
    one uncached pass; calls that bring their own cache (generation) are left as they are.
    """
    original = type(backbone).forward

    def forward(*args, **kwargs):
        if kwargs.get("cache") is None and kwargs.get("cache_params") is None:
            kwargs["use_cache"] = False
        return original(backbone, *args, **kwargs)

    return forward


class Mamba(Architecture):
    """Mamba-1 and FalconMamba: `base_model.layers[i]` is a block `x + mixer(norm(x))`, then `norm_f`."""

    name = "mamba"
    supported = ("transformers' MambaForCausalLM and FalconMambaForCausalLM, and mambalrp_tools' "
                 "MambaClassifier / FalconMambaClassifier")
    patch_map = {
        MambaModel: backbone_forward, FalconMambaModel: backbone_forward,
        MambaBlock: block_forward, FalconMambaBlock: block_forward,
        MambaRMSNorm: norm_forward, FalconMambaRMSNorm: norm_forward,  # not the mixer's weightless norms
        MambaMixer: mixer_forward, FalconMambaMixer: mixer_forward,
    }

    def layers(self, model):
        return list(model.base_model.layers)

    def mixer(self, layer):
        return layer.mixer

    def final_norm(self, model):
        return getattr(model.base_model, "norm_f", None)

    def scan_quantities(self, mixer, hidden_states, attention_mask=None) -> LayerSSM:
        backend = backends.resolve("torch", hidden_states.device)
        with torch.no_grad():
            u, delta, A, B, C, D, _ = selective_parameters(mixer, hidden_states, attention_mask, Rules.none(), backend)
        return LayerSSM(u, delta, A, B, C, D, attention_mask)

    def activation_dtype(self, model, precision: str) -> torch.dtype:
        return activation_dtype(next(model.parameters()).dtype, precision)

    def sizes(self, model) -> Sizes:
        config = model.config
        return Sizes(layers=config.num_hidden_layers, hidden=config.hidden_size, inner=config.intermediate_size,
                     state=config.state_size, activation_floats=ACTIVATION_FLOATS)


MAMBA = Mamba()
