"""Moved to `mambalrp_tools.tasks.tokenizers` (tasks own their word tokenizer); kept for one release."""

from ..tasks.tokenizers import MODELS_DIR, PAD, SPECIALS, UNK, build_word_tokenizer, toy_tokenizer

__all__ = ["MODELS_DIR", "PAD", "SPECIALS", "UNK", "build_word_tokenizer", "toy_tokenizer"]
