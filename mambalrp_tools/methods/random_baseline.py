"""The random baseline: standard normal relevance, reproducible through `seed`."""

from __future__ import annotations

import zlib

import torch

from .base import register


@register("random")
def random(query, seed: int = 0):
    """Signed standard-normal scores per token (seeded; padded positions get 0).

    Each sample's scores depend only on `seed` and its own (non-padded) tokens, so a sample gets the
    same scores alone as in any batch.
    """
    query.resolve()
    ids = query.input_ids.cpu()
    mask = torch.ones_like(ids) if query.attention_mask is None else query.attention_mask.cpu()
    scores = torch.zeros(ids.shape)
    for i in range(ids.shape[0]):
        real = mask[i].bool()
        tokens = ids[i, real].numpy().astype("int64").tobytes()
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(tokens)) % 2**63)
        scores[i, real] = torch.randn(int(real.sum()), generator=gen)
    return scores
