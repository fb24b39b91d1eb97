"""LRP-family methods: Gradient x Input on the forward pass patched with MambaLRP's rules."""

from __future__ import annotations

from ..rules import Rules
from .base import register


@register("mambalrp", aliases=("lrp",), completeness="f", conserves=True, takes_rules=True)
def mambalrp(query, rules=None):
    """MambaLRP (all four rules by default; `rules={"ssm": False}` etc. for ablations). Conserves relevance."""
    return query.gradient_x_input(Rules.of(rules))


@register("lrp_ln", aliases=("naive_lrp",), completeness="f")
def lrp_ln(query):
    """Naive LRP: only the norm rule, as LRP for Transformers would give (does not conserve on Mamba)."""
    return query.gradient_x_input(Rules(silu=False, ssm=False, gate=False, norm=True))


@register("gradient_x_input", aliases=("gi", "gxi", "input_x_gradient"), completeness="f")
def gradient_x_input(query):
    """Gradient x Input on the embeddings, summed over the embedding dimension (signed)."""
    return query.gradient_x_input(Rules.none())
