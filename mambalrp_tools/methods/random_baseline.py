"""The random baseline: standard normal relevance, reproducible through `seed`."""

from __future__ import annotations

import torch

from .base import register


@register("random")
def random(query, seed: int = 0):
    """Signed standard-normal scores per token (seeded; padded positions get 0)."""
    query.resolve()
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(query.input_ids.shape, generator=gen)
    if query.attention_mask is not None:
        scores = scores * query.attention_mask.cpu()
    return scores
