"""The MambaLRP propagation rules (Rezaei Jafari et al., NeurIPS 2024, arXiv 2406.07592).

MambaLRP is Gradient x Input on a forward pass whose values are unchanged but whose gradient flow is
rewritten at four places. Each rule is one small generic function below, which every architecture
composes (Mamba-2's gated norm is `rms_norm(gate(y, silu(z)))`, computed as `rms_norm(gated_silu(y,
z))`, the same gate in one autograd node that keeps less); `[v]` in the comments means "v is
treated as a constant" (detached). Turning a rule off gives back the true gradient at that place.

- identity rule, elementwise activation a * f(a):  a * [f(a)]        `identity`, `silu`
- half rule, product of two factors:                x*y/2 + [x*y/2]   `gate`
- stop-gradient of the normaliser:                  x * [1/rms(x)] w  `rms_norm`
- ssm rule, selective scan:                         [delta], [A], [B], [C], [D]: linear in u  `ssm`
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

import torch
import torch.nn.functional as F

from .numerics import upcast  # its home is numerics; `rules.upcast` stays importable


@dataclass(frozen=True)
class Rules:
    """Which MambaLRP rules are on. All off = plain gradient (Gradient x Input at the readout)."""

    silu: bool = True  # SiLU(a) = a * [sigmoid(a)]
    ssm: bool = True  # [delta], [B], [C]: the scan is linear in u
    gate: bool = True  # y * SiLU(z) passes half the relevance to each factor
    norm: bool = True  # x * [rsqrt(mean(x^2) + eps)] * w

    @classmethod
    def of(cls, rules: "Rules | Mapping[str, bool] | None") -> "Rules":
        """Accept None (all on), a Rules, or a mapping whose missing keys default to True."""
        if rules is None:
            return cls()
        if isinstance(rules, Rules):
            return rules
        known = {f.name for f in fields(cls)}
        unknown = set(rules) - known
        if unknown:
            raise ValueError(f"unknown MambaLRP rule(s) {sorted(unknown)}; the rules are {sorted(known)}")
        return cls(**{k: bool(v) for k, v in rules.items()})

    @classmethod
    def none(cls) -> "Rules":
        return cls(silu=False, ssm=False, gate=False, norm=False)


def identity(a: torch.Tensor, factor: torch.Tensor, rule: bool) -> torch.Tensor:
    """An elementwise activation written as a * factor(a); with the rule the factor is a constant, so
    the activation passes relevance through unchanged (identity rule)."""
    return a * (factor.detach() if rule else factor)


def silu(a: torch.Tensor, rule: bool) -> torch.Tensor:
    """SiLU = a * sigmoid(a); with the rule, the sigmoid is a constant factor (identity rule)."""
    if not rule:
        return F.silu(a)
    return identity(a, torch.sigmoid(a), rule)


def gate(y: torch.Tensor, gate_act: torch.Tensor, rule: bool) -> torch.Tensor:
    """y * gate_act; with the rule, g/2 + [g/2], so each factor receives half of the relevance."""
    return _HalfProduct.apply(y, gate_act) if rule else y * gate_act


class _HalfProduct(torch.autograd.Function):
    """y * g whose gradient is that of y*g/2 + [y*g/2]: one pass forward instead of three."""

    @staticmethod
    def forward(ctx, y, g):
        ctx.save_for_backward(y, g)
        return y * g

    @staticmethod
    def backward(ctx, grad):
        y, g = ctx.saved_tensors
        half = 0.5 * grad
        return (half * g if ctx.needs_input_grad[0] else None), (half * y if ctx.needs_input_grad[1] else None)


def gated_silu(y: torch.Tensor, z: torch.Tensor, rules: Rules) -> torch.Tensor:
    """y * SiLU(z), the gate of a Mamba mixer, with the gate and silu rules as `rules` sets them: the
    values and gradients of `gate(y, silu(z, rules.silu), rules.gate)` in one autograd node that
    keeps only y and z (SiLU(z) and sigmoid(z) are computed again in backward: one float per channel
    and token less than the composition keeps)."""
    return _GatedSiLU.apply(y, z, rules.silu, rules.gate)


class _GatedSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, silu_rule, gate_rule):
        ctx.save_for_backward(y, z)
        ctx.rules = silu_rule, gate_rule
        return y * silu(z, silu_rule)

    @staticmethod
    def backward(ctx, grad):
        y, z = ctx.saved_tensors
        silu_rule, gate_rule = ctx.rules
        if gate_rule:  # half of the product's relevance to each factor
            grad = 0.5 * grad
        dy = dz = None
        if ctx.needs_input_grad[0]:
            dy = grad * silu(z, silu_rule)
        if ctx.needs_input_grad[1]:
            ds = grad * y  # the gradient reaching SiLU(z)
            dz = ds.mul_(torch.sigmoid(z)) if silu_rule else torch.ops.aten.silu_backward(ds, z)
        return dy, dz, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, rule: bool) -> torch.Tensor:
    """RMSNorm (half precision upcast); with the rule the normaliser is a constant, so it is linear in x."""
    x = upcast(x)
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if rule:
        scale = scale.detach()
    out = x * scale
    return out if weight is None else out * upcast(weight)


def ssm(delta, A, B, C, D, rule: bool):
    """The ssm rule: with delta, B and C constant the scan (and so exp(delta A)) is linear in its input u.

    A and D are weights: detaching them changes no input gradient, but it tells the scan that only
    the linear path in u is needed, so its backward is one reverse scan and nothing more.
    Returns (delta, A, B, C, D), detached with the rule; D may be None.
    """
    if not rule:
        return delta, A, B, C, D
    return tuple(None if t is None else t.detach() for t in (delta, A, B, C, D))
