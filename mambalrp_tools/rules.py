"""The MambaLRP propagation rules (Rezaei Jafari et al., NeurIPS 2024, arXiv 2406.07592).

MambaLRP is Gradient x Input on a forward pass whose values are unchanged but whose gradient flow is
rewritten at four places. Each rule is one tiny function below; `[v]` in the comments means "v is
treated as a constant" (detached). Turning a rule off gives back the true gradient at that place.

The SSM rule (detach delta, B, C and so exp(delta A)) is applied where the scan is called, in
`architectures/mamba.py` (`ssm_inputs`); everything downstream of it is linear in u.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

import torch
import torch.nn.functional as F


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


def silu(a: torch.Tensor, rule: bool) -> torch.Tensor:
    """SiLU; with the rule, the sigmoid is a constant factor (identity rule)."""
    if not rule:
        return F.silu(a)
    return a * torch.sigmoid(a).detach()


def gate(y: torch.Tensor, gate_act: torch.Tensor, rule: bool) -> torch.Tensor:
    """y * gate_act; with the rule, g/2 + [g/2] so each factor receives half of the relevance."""
    g = y * gate_act
    if not rule:
        return g
    half = 0.5 * g
    return half + half.detach()


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32 (relevance needs it); float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, rule: bool) -> torch.Tensor:
    """RMSNorm (half precision upcast); with the rule the normaliser is a constant, so it is linear in x."""
    x = upcast(x)
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if rule:
        scale = scale.detach()
    out = x * scale
    return out if weight is None else out * upcast(weight)
