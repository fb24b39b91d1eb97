"""`copying`: distinct random symbols, a separator, then the symbols copied one by one.

    x17 x3 x88 ... x40 | x17 x3 ...        target: the next symbol to copy

Evidence: the position of that symbol in the source half; candidates: the whole source half. The
symbols of one sequence are distinct, so the evidence is a single, unambiguous position.
"""

from __future__ import annotations

import random

import torch

from .base import Example
from .text import Encoder, assemble, positions

KIND = "lm"
ALPHABET = tuple(f"x{i}" for i in range(128))  # twice the longest trained length (64)
SEP = "|"
DEFAULTS = dict(min_length=8, max_length=64)


def vocabulary() -> list[str]:
    return [*ALPHABET, SEP]


def _draw(rng: random.Random, min_length=8, max_length=64, length=None):
    if length is None:
        if not 1 <= min_length <= max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
        length = rng.randint(min_length, max_length)
    if not 1 <= length <= len(ALPHABET):
        raise ValueError(f"copying length must be in 1..{len(ALPHABET)} (distinct symbols), got {length}")
    return rng.sample(ALPHABET, length)


def example(rng: random.Random, enc: Encoder, index=None, **params) -> Example:
    """`index`: how many symbols are already copied (default: drawn), i.e. the target is symbol index+1."""
    source = _draw(rng, **params)
    n = len(source)
    j = rng.randrange(n) if index is None else int(index)
    if not 0 <= j < n:
        raise ValueError(f"index must be in 0..{n - 1}, got {index}")
    words = [*source, SEP, *source[:j]]
    ids, spans = assemble(enc.segments(words))
    return Example(
        input_ids=torch.tensor(ids, dtype=torch.long),
        target=enc.word_id(source[j]),
        evidence=positions(spans, [j]),
        candidates=positions(spans, range(n)),
        text=" ".join(words),
        meta=dict(length=n, index=j, source_position=spans[j][0], symbol=source[j]),
    )


def training_sequence(rng: random.Random, enc: Encoder, **params):
    """The whole sequence (source, separator, full copy) and labels: next token on the copy half."""
    source = _draw(rng, **params)
    ids, spans = assemble(enc.segments([*source, SEP, *source]))
    labels = [-100] * len(ids)
    start = spans[len(source)][0]  # the separator: from here on, each position predicts the next token
    for p in range(start, len(ids) - 1):
        labels[p] = ids[p + 1]
    return ids, labels
