"""The embedded toy models: word-level tokenizers, training code and the shipped models (models/<name>/).

    mambalrp_tools.load_model("toy/needle")          # loads models/needle offline
    mambalrp-tools train-toy needle --device cuda    # retrains it (see zoo/train.py)
"""

from ..tasks.tokenizers import build_word_tokenizer, toy_tokenizer

__all__ = ["build_word_tokenizer", "toy_tokenizer"]
