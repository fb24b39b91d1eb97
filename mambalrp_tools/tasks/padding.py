"""Batches of token sequences: one pad-id rule and one left-padding, for the whole package.

Inputs are padded on the left, so the explained (last) position is a real token in every row, as
the classifiers and the causal LMs are fed.
"""

from __future__ import annotations

from typing import Sequence

import torch


def pad_id(tokenizer=None, config=None) -> int:
    """The padding id: the tokenizer's (else the config's) pad token, else its eos token, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        for source in (tokenizer, config):
            tid = getattr(source, attr, None) if source is not None else None
            if isinstance(tid, (list, tuple)):  # some configs list several eos ids
                tid = tid[0] if tid else None
            if tid is not None:
                return int(tid)
    return 0


def left_pad(seqs: Sequence[Sequence[int] | torch.Tensor], pad: int, *, min_length: int = 1
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N, W], attention mask [N, W]) with every sequence right-aligned; W >= min_length.

    An empty sequence becomes a row of padding whose last position is marked real (mask 1), so a
    model always has one position to read.
    """
    rows = [torch.as_tensor(s, dtype=torch.long).flatten() for s in seqs]
    width = max([min_length, *(r.numel() for r in rows)])
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        if r.numel():
            ids[i, width - r.numel():] = r
        mask[i, width - max(r.numel(), 1):] = 1
    return ids, mask
