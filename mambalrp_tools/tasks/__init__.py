"""Tasks: lists of `Example`s with known evidence (DESIGN section 5).

    from mambalrp_tools import tasks
    examples = tasks.load("needle", n=100, seed=0, context_length=1024, depth=0.5)
    ex = examples[0]; ex.input_ids, ex.target, ex.evidence, ex.candidates, ex.text, ex.meta

Synthetic tasks (`copying`, `needle`, `bios`, `sentiment`) are generated; with `tokenizer=None` they
are tokenized with the matching embedded model's tokenizer, with any other tokenizer (a hub model's)
the evidence is mapped to that tokenizer's positions. Hub datasets (`sst2`, `snli`, `emotion`,
`bias_in_bios`, `med_bios`) load through `datasets` (see `tasks.hub`; pass `source=` for a local copy).
"""

from __future__ import annotations

import random
from types import ModuleType

from . import bios, copying, needle, sentiment
from .base import Example
from .bios import swap_gender
from .io import load_examples, read_examples, save_examples
from .padding import left_pad, pad_id
from .text import Encoder
from .tokenizers import build_word_tokenizer, toy_tokenizer

TASKS: dict[str, ModuleType] = {"copying": copying, "needle": needle, "bios": bios, "sentiment": sentiment}
HUB_TASKS = ("sst2", "snli", "emotion", "bias_in_bios", "med_bios")

__all__ = ["Example", "HUB_TASKS", "TASKS", "build_word_tokenizer", "get_task", "left_pad", "list_tasks", "load",
           "load_examples", "pad_id", "read_examples", "save_examples", "swap_gender", "toy_tokenizer"]


def list_tasks() -> list[str]:
    return [*TASKS, *HUB_TASKS]


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; synthetic tasks are {sorted(TASKS)}, hub datasets {list(HUB_TASKS)}")
    return TASKS[name]


def resolve_tokenizer(name: str, tokenizer):
    if tokenizer is not None:
        return tokenizer
    return toy_tokenizer(name)


def load(name: str, n: int = 100, seed: int = 0, tokenizer=None, **params) -> list[Example]:
    """`n` examples of task `name`, the same for the same seed and parameters.

    tokenizer: None (the embedded model's for this task) or any Hugging Face tokenizer.
    params: the task's parameters (copying: min_length, max_length, length, index; needle:
    context_length or min/max_context_length, depth, given; bios: gender_correlation, ambiguous,
    label, gender; sentiment: label; hub datasets: source, split, text/label columns, see tasks.hub).
    """
    if name in HUB_TASKS:
        from . import hub

        return hub.load(name, n=n, seed=seed, tokenizer=tokenizer, **params)
    task = get_task(name)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    enc = Encoder(resolve_tokenizer(name, tokenizer))
    rng = random.Random(seed)
    return [task.example(rng, enc, **params) for _ in range(n)]
