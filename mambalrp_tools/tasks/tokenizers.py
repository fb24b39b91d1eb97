"""Word-level tokenizers for the toy tasks, built with the `tokenizers` library.

One token per word of the task's vocabulary (lowercased; punctuation is its own word), so relevance
lands on whole words and the evidence of a task maps to exactly one position per word. Saved as
tokenizer.json next to the model and loaded back as `PreTrainedTokenizerFast`, i.e. through the
same `AutoTokenizer.from_pretrained` path as any hub tokenizer.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK = "[PAD]", "[UNK]"
SPECIALS = (PAD, UNK)  # PAD is id 0: the toy models keep its embedding at zero (pads are inert)

#: where the embedded models live (read as files: tasks never import zoo)
MODELS_DIR = Path(__file__).parent.parent / "zoo" / "models"


def build_word_tokenizer(words: Iterable[str], model_max_length: int = 1 << 16) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over SPECIALS + `words` (order kept, duplicates dropped)."""
    vocab: dict[str, int] = {}
    for w in (*SPECIALS, *(w.lower() for w in words)):
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    # \w+ | [^\w\s]+ : words and punctuation runs; the generators put spaces around punctuation
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, unk_token=UNK, padding_side="left",
        truncation_side="left", model_max_length=model_max_length,
    )


@functools.lru_cache(maxsize=None)
def toy_tokenizer(task: str) -> PreTrainedTokenizerFast:
    """The tokenizer of the embedded model for `task`: the shipped one, or (before any model is
    trained) the same tokenizer built from the task's vocabulary."""
    folder = MODELS_DIR / task
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    from . import get_task

    return build_word_tokenizer(get_task(task).vocabulary())
