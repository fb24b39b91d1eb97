"""Gradient-based baselines computed by Captum on the input embeddings (rules off: true gradients)."""

from __future__ import annotations

from captum.attr import Saliency

from ..rules import Rules
from .base import register


@register("gradient", aliases=("saliency",))
def gradient(query):
    """Saliency: the L2 norm of df/de per token (non-negative, as Captum's `Saliency`)."""
    query.resolve()
    embeds = query.embeddings().requires_grad_()
    with query.patched(Rules.none()):
        grads = Saliency(query.forward_func).attribute(
            embeds, additional_forward_args=query.forward_args, abs=False
        )
    return grads.norm(dim=-1)
