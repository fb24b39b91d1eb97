"""Turning generated text into token ids while keeping track of where the evidence went.

Generators write a list of segments (short pieces of text, a word or a sentence). Each segment is
tokenized on its own, with the leading space it has in the joined text, so its token span is known
exactly for any tokenizer: a word-level toy tokenizer gives one token per word, a BPE tokenizer
gives the same tokens it gives on the whole text (BPE pre-tokenizers split before a space anyway).
"""

from __future__ import annotations

from typing import Sequence

import torch

# A segment's token span: [start, end) positions in the assembled ids.
Span = tuple[int, int]


class Encoder:
    """Tokenizes segments with one tokenizer; for word-level toy tokenizers it skips the tokenizer.

    The fast path (a dict lookup per word) gives exactly what the toy tokenizer gives on text made of
    lowercase-able words separated by spaces, which is all the generators write; any word outside the
    vocabulary sends that call through the real tokenizer.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab = _word_level_vocab(tokenizer)

    def segments(self, texts: Sequence[str], first: bool = True) -> list[list[int]]:
        """Token ids of each segment. `first`: the first segment starts the text (no leading space)."""
        if self.vocab is not None:
            try:
                return [[self.vocab[w] for w in t.lower().split()] for t in texts]
            except KeyError:
                pass
        spaced = [t if (i == 0 and first) else " " + t for i, t in enumerate(texts)]
        return self.tokenizer(spaced, add_special_tokens=False)["input_ids"]

    def word_id(self, word: str) -> int:
        """The first token of `word` as it appears after a space (the token a LM must predict)."""
        return self.segments([word], first=False)[0][0]


def _word_level_vocab(tokenizer) -> dict[str, int] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "WordLevel":
        return None
    pre = type(backend.pre_tokenizer).__name__ if backend.pre_tokenizer is not None else None
    if pre not in ("Whitespace", "WhitespaceSplit"):
        return None
    return dict(tokenizer.get_vocab())


def assemble(pieces: Sequence[Sequence[int]]) -> tuple[list[int], list[Span]]:
    """Concatenate per-segment ids; return the ids and each segment's span."""
    ids, spans = [], []
    for p in pieces:
        spans.append((len(ids), len(ids) + len(p)))
        ids.extend(p)
    return ids, spans


def positions(spans: Sequence[Span], which: Sequence[int]) -> torch.Tensor:
    """All token positions covered by the segments `which`, as a sorted LongTensor."""
    out = sorted({t for i in which for t in range(*spans[i])})
    return torch.tensor(out, dtype=torch.long)


def as_long(values) -> torch.Tensor:
    return torch.as_tensor(list(values), dtype=torch.long)


def word_example(words, target: int, enc: Encoder, evidence=(), candidates=None, groups=None, meta=None):
    """An `Example` from a list of words (one segment each): word indices -> token positions.

    `evidence`, `candidates` and each of `groups` (name -> word indices, stored as meta[name + "_positions"])
    are word indices.
    """
    from .base import Example

    ids, spans = assemble(enc.segments(list(words)))
    meta = dict(meta or {})
    for name, idx in (groups or {}).items():
        meta[f"{name}_positions"] = positions(spans, idx).tolist()
    return Example(
        input_ids=torch.tensor(ids, dtype=torch.long),
        target=int(target),
        evidence=positions(spans, evidence),
        candidates=None if candidates is None else positions(spans, candidates),
        text=" ".join(words),
        meta=meta,
    )
