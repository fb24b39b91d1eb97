"""`needle`: passkey retrieval in filler text with distractors.

    ... the old code was 5 2 8 0 . tom found 3 keys near the river . the secret code is 4 7 1 9 .
    ... the guest code is 6 6 1 2 . ... what is the secret code ? the secret code is   -> 4

The filler is made of template sentences over a small English word list. It carries distractors:
numbers everywhere and near-miss sentences ("the old code was ...", "the secret number is ...")
that share words with the needle, so the model has to bind "secret" and "code" to find the passkey.
Without them a tiny Mamba solves retrieval at any length at once and its explanations say nothing.

Evidence: the needle's code digits; meta["answer_position"] is the one digit the target copies.
"""

from __future__ import annotations

import random

import torch

from .base import Example
from .text import Encoder, as_long

KIND = "lm"
DIGITS = tuple("0123456789")
CODE_LENGTH = 4
NEEDLE_KEY = ("the", "secret", "code", "is")
QUESTION = ("what", "is", "the", "secret", "code", "?", "the", "secret", "code", "is")
DEFAULTS = dict(min_context_length=128, max_context_length=1024)

NAMES = ("tom", "anna", "ben", "lisa", "sam", "maria", "paul", "emma", "jack", "nina", "leo", "kate")
NOUNS = ("river", "garden", "house", "road", "forest", "market", "boat", "window", "table", "hill",
         "village", "bridge", "field", "door", "lamp", "letter", "box", "tree", "cat", "dog")
PLURALS = ("keys", "birds", "apples", "boats", "books", "stones", "chairs", "cups", "coins", "flowers")
ADJS = ("old", "small", "green", "quiet", "long", "warm", "dark", "bright", "empty", "little")
VERBS = ("walked", "looked", "waited", "sat", "stood", "talked", "rested", "played", "sang", "slept")
PREPS = ("near", "behind", "under", "across", "beside", "inside", "past", "around")
WEATHER = ("sunny", "cold", "windy", "rainy", "calm", "grey")
# near-miss keys: one word away from "the secret code is"
OTHER_CODES = ("old", "new", "guest", "spare", "door", "office", "first", "last")
OTHER_SECRETS = ("number", "word", "room", "plan", "door")
TENSES = ("is", "was")


def vocabulary() -> list[str]:
    return [*DIGITS, *NEEDLE_KEY, *QUESTION, ".", "?", "a", "at", "in", "and", "there", "were", "found",
            "had", "left", "on", "day", "it", "years", "floor", "of", "after", "morning", "evening",
            "the", "code", "secret", "train", "page", "bus", "number", "house",
            *NAMES, *NOUNS, *PLURALS, *ADJS, *VERBS, *PREPS, *WEATHER, *OTHER_CODES, *OTHER_SECRETS, *TENSES]


def _digits(rng, n):
    return [rng.choice(DIGITS) for _ in range(n)]


def _sentence(rng: random.Random) -> list[str]:
    """One filler sentence; about a third carry numbers, about one in eight is a near-miss code."""
    r = rng.random()
    c = rng.choice
    if r < 0.08:
        return ["the", c(OTHER_CODES), "code", c(TENSES), *_digits(rng, CODE_LENGTH), "."]
    if r < 0.13:
        return ["the", "secret", c(OTHER_SECRETS), c(TENSES), *_digits(rng, rng.randint(1, CODE_LENGTH)), "."]
    if r < 0.22:
        return [c(NAMES), "found", c(DIGITS), c(PLURALS), c(PREPS), "the", c(NOUNS), "."]
    if r < 0.28:
        return ["the", c(("train", "bus")), "left", "at", c(DIGITS), c(DIGITS), "."]
    if r < 0.34:
        return [c(NAMES), "was", c(DIGITS), c(DIGITS), "years", "old", "."]
    if r < 0.38:
        return ["the", c(NOUNS), "is", "on", "page", *_digits(rng, rng.randint(1, 3)), "."]
    if r < 0.55:
        return [c(NAMES), c(VERBS), c(PREPS), "the", c(ADJS), c(NOUNS), "."]
    if r < 0.70:
        return ["the", c(ADJS), c(NOUNS), c(TENSES), c(PREPS), "the", c(NOUNS), "."]
    if r < 0.80:
        return ["it", "was", "a", c(WEATHER), "day", "in", "the", c(NOUNS), "."]
    if r < 0.90:
        return ["there", "were", c(ADJS), c(PLURALS), "in", "the", c(NOUNS), "."]
    return [c(NAMES), "and", c(NAMES), c(VERBS), "in", "the", c(("morning", "evening")), "."]


def _context_length(rng, context_length=None, min_context_length=128, max_context_length=1024):
    if context_length is None:
        if not 32 <= min_context_length <= max_context_length:
            raise ValueError("need 32 <= min_context_length <= max_context_length")
        context_length = rng.randint(min_context_length, max_context_length)
    if context_length < 32:
        raise ValueError(f"context_length must be at least 32 tokens, got {context_length}")
    return int(context_length)


def _build(rng: random.Random, enc: Encoder, given: int, answers: int, depth=None, **params):
    """Words and token pieces of filler + needle + question (+ `answers` code digits).

    The input up to the target has exactly `context_length` tokens of `enc`'s tokenizer. Every word
    is tokenized with its leading space (also the first), which keeps lengths exact for any tokenizer.
    """
    length = _context_length(rng, **params)
    depth = rng.random() if depth is None else float(depth)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if not 0 <= given < CODE_LENGTH:
        raise ValueError(f"given must be in 0..{CODE_LENGTH - 1}, got {given}")
    code = _digits(rng, CODE_LENGTH)
    needle = [*NEEDLE_KEY, *code, "."]
    question = [*QUESTION, *code[:given]]
    fixed = sum(map(len, enc.segments(needle + question, first=False)))
    room = length - fixed
    if room < 0:
        raise ValueError(f"context_length {length} is too short for the needle and the question")

    # every word is at least one token: `room` words of filler are always enough
    sentences, n_words = [], 0
    while n_words < room:
        sentences.append(_sentence(rng))
        n_words += len(sentences[-1])
    pieces = [enc.segments(s, first=False) for s in sentences]
    excess = sum(len(t) for p in pieces for t in p) - room
    while excess > 0:  # drop filler from the left, word by word, then token by token
        first = pieces[0]
        if len(first[0]) <= excess:
            excess -= len(first[0])
            first.pop(0)
            sentences[0].pop(0)
            if not first:
                pieces.pop(0)
                sentences.pop(0)
        else:
            first[0] = first[0][excess:]
            sentences[0][0] = enc.tokenizer.decode(first[0]).strip() or sentences[0][0]
            excess = 0

    # needle at the sentence boundary closest to depth * filler
    bounds, total = [0], 0
    for p in pieces:
        total += sum(map(len, p))
        bounds.append(total)
    cut = min(range(len(bounds)), key=lambda i: (abs(bounds[i] - depth * room), i))
    words = [w for s in sentences[:cut] for w in s]
    toks = [t for p in pieces[:cut] for t in p]
    needle_word0 = len(words)
    words += needle
    toks += enc.segments(needle, first=False)
    words += [w for s in sentences[cut:] for w in s]
    toks += [t for p in pieces[cut:] for t in p]
    question_word0 = len(words)
    words += question + code[given:given + answers]
    toks += enc.segments(question + code[given:given + answers], first=False)
    return dict(words=words, toks=toks, code=code, depth=depth, length=length,
                needle_word0=needle_word0, question_word0=question_word0, given=given)


def _spans(toks):
    spans, pos = [], 0
    for t in toks:
        spans.append((pos, pos + len(t)))
        pos += len(t)
    return spans


def example(rng: random.Random, enc: Encoder, given: int = 0, **params) -> Example:
    """`given`: how many code digits the question already repeats; the target is the next one."""
    b = _build(rng, enc, given, answers=0, **params)
    spans = _spans(b["toks"])
    ids = [i for t in b["toks"] for i in t]
    n0 = b["needle_word0"]
    digit_words = range(n0 + len(NEEDLE_KEY), n0 + len(NEEDLE_KEY) + CODE_LENGTH)
    evidence = [spans[w][0] + k for w in digit_words for k in range(spans[w][1] - spans[w][0])]
    # near-miss codes and other numbers: where a wrong answer would come from
    distractors = [spans[w][0] for w, word in enumerate(b["words"][:b["question_word0"]])
                   if word in DIGITS and w not in digit_words]
    return Example(
        input_ids=torch.tensor(ids, dtype=torch.long),
        target=enc.word_id(b["code"][given]),
        evidence=as_long(evidence),
        candidates=None,
        text=" ".join(b["words"]),
        meta=dict(depth=b["depth"], context_length=len(ids), code="".join(b["code"]), given=given,
                  needle_start=spans[n0][0], needle_end=spans[n0 + len(NEEDLE_KEY) + CODE_LENGTH - 1][1],
                  answer_position=spans[digit_words[given]][0], distractor_positions=distractors,
                  question_start=spans[b["question_word0"]][0]),
    )


def training_sequence(rng: random.Random, enc: Encoder, **params):
    """Filler + needle + question + the whole code; labels on the code digits after the question."""
    b = _build(rng, enc, 0, answers=CODE_LENGTH, **params)
    ids = [i for t in b["toks"] for i in t]
    spans = _spans(b["toks"])
    labels = [-100] * len(ids)
    q_end = spans[b["question_word0"] + len(QUESTION) - 1][1]  # first code token is predicted from here
    for p in range(q_end - 1, len(ids) - 1):
        labels[p] = ids[p + 1]
    return ids, labels
