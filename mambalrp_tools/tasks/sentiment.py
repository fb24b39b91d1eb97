"""`sentiment`: SST-2-like movie review sentences from templates (0 = negative, 1 = positive).

    to be honest , the acting was not very good , but the soundtrack is wonderful .   -> positive

Clauses say something about an aspect of a film with a sentiment word, optionally intensified
("very", "really") or negated ("not", "never"), wrapped in neutral filler. A sentence has one clause,
or two joined by "but" / "although": the label follows the clause after "but" and the main clause
of "although" (the deciding clause). Negation flips a clause's polarity.

Evidence: the sentiment words of the deciding clause and their negators. meta also lists all
sentiment, negation and intensifier positions.
"""

from __future__ import annotations

import random

from .text import Encoder, word_example

KIND = "classifier"
LABELS = ("negative", "positive")
DEFAULTS: dict = {}

POSITIVE = ("good", "great", "wonderful", "brilliant", "moving", "charming", "delightful", "funny",
            "beautiful", "superb", "gripping", "clever")
NEGATIVE = ("bad", "boring", "dull", "awful", "terrible", "tedious", "bland", "clumsy", "painful",
            "forgettable", "weak", "messy")
POS_VERBS = ("loved", "enjoyed", "liked", "admired")
NEG_VERBS = ("hated", "disliked", "regretted", "resented")
ASPECTS = ("the movie", "this film", "the plot", "the acting", "the soundtrack", "the story", "the ending",
           "the cast", "the script", "the dialogue", "the direction", "the pacing")
INTENSIFIERS = ("very", "really", "truly", "quite", "so", "incredibly")
NEGATORS = ("not", "never")
OPENERS = ("to be honest ,", "in the end ,", "overall ,", "frankly ,", "as expected ,", "after all ,",
           "for a two hour film ,", "on a rainy sunday ,")
BASE = dict(loved="love", enjoyed="enjoy", liked="like", admired="admire", hated="hate", disliked="dislike",
            regretted="regret", resented="resent")  # verb forms after "did not"
TAILS = ("from start to finish", "for most of the time", "as far as i remember", "in my opinion",
         "compared to the book", "on the big screen")


def vocabulary() -> list[str]:
    words = [*POSITIVE, *NEGATIVE, *POS_VERBS, *NEG_VERBS, *INTENSIFIERS, *NEGATORS,
             *BASE.values(), "was", "is", "i", "did", "it", "but", "although", ".", ","]
    for phrases in (ASPECTS, OPENERS, TAILS):
        for p in phrases:
            words += p.split()
    return words


def _clause(rng: random.Random, polarity: int):
    """Words of a clause with the given polarity and, per word, its role (or None)."""
    negated = rng.random() < 0.3
    surface = polarity if not negated else 1 - polarity  # the sentiment word before negation
    out: list[tuple[str, str | None]] = []

    def add(text, role=None):
        out.extend((w, role) for w in text.split())

    if rng.random() < 0.75:  # "<aspect> was [not] [very] <adjective>"
        add(rng.choice(ASPECTS))
        add(rng.choice(("was", "is")))
        if negated:
            add(rng.choice(NEGATORS), "negation")
        if rng.random() < 0.4:
            add(rng.choice(INTENSIFIERS), "intensifier")
        add(rng.choice(POSITIVE if surface else NEGATIVE), "sentiment")
    else:  # "i [did not] <verb> <aspect>"
        add("i")
        if negated:
            add("did")
            add("not", "negation")
            add(BASE[rng.choice(POS_VERBS if surface else NEG_VERBS)], "sentiment")
        else:
            if rng.random() < 0.3:
                add(rng.choice(("really", "truly")), "intensifier")
            add(rng.choice(POS_VERBS if surface else NEG_VERBS), "sentiment")
        add(rng.choice(ASPECTS))
    if rng.random() < 0.25:
        add(rng.choice(TAILS))
    return out, negated


def example(rng: random.Random, enc: Encoder, label: int | None = None):
    label = rng.randrange(2) if label is None else int(label)
    parts: list[tuple[str, str | None]] = []
    if rng.random() < 0.35:
        parts += [(w, None) for w in rng.choice(OPENERS).split()]
    form = rng.random()
    deciding, deciding_neg = _clause(rng, label)
    decide = [(w, r) for w, r in deciding]
    if form < 0.5:
        body = [(w, r, True) for w, r in decide]
    else:  # a clause of either polarity, then the deciding one
        other, _ = _clause(rng, rng.randrange(2))
        if form < 0.8:
            body = [(w, r, False) for w, r in other] + [(",", None, False), ("but", None, False)] + \
                   [(w, r, True) for w, r in decide]
        else:
            body = [("although", None, False)] + [(w, r, False) for w, r in other] + [(",", None, False)] + \
                   [(w, r, True) for w, r in decide]
    words = [w for w, _ in parts] + [w for w, _, _ in body] + ["."]
    roles = [(r, False) for _, r in parts] + [(r, d) for _, r, d in body] + [(None, False)]
    idx = {name: [i for i, (r, _) in enumerate(roles) if r == name] for name in ("sentiment", "negation", "intensifier")}
    evidence = [i for i, (r, d) in enumerate(roles) if d and r in ("sentiment", "negation")]
    return word_example(words, label, enc, evidence=evidence, groups=idx,
                        meta=dict(label=LABELS[label], negated=deciding_neg, clauses=1 if form < 0.5 else 2))
