"""Examples as JSON lines: a task draw users can edit, or bring their own of."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .base import Example


def save_examples(examples, path) -> Path:
    """One example per line: input_ids, target, evidence, candidates, text, meta."""
    path = Path(path)
    with open(path, "w") as fh:
        for ex in examples:
            fh.write(json.dumps({
                "input_ids": ex.input_ids.tolist(), "target": int(ex.target), "evidence": ex.evidence.tolist(),
                "candidates": None if ex.candidates is None else ex.candidates.tolist(),
                "text": ex.text, "meta": ex.meta,
            }, default=str) + "\n")
    return path


def read_examples(path, n: int | None = None) -> list[Example]:
    """The first `n` (all if None) examples of a file written by `save_examples`."""
    out = []
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            d = json.loads(line)
            out.append(Example(
                input_ids=torch.tensor(d["input_ids"], dtype=torch.long), target=int(d["target"]),
                evidence=torch.tensor(d.get("evidence", []), dtype=torch.long),
                candidates=None if d.get("candidates") is None else torch.tensor(d["candidates"], dtype=torch.long),
                text=d.get("text"), meta=d.get("meta") or {},
            ))
            if n is not None and len(out) >= n:
                break
    return out


def load_examples(task: str, n: int, seed: int = 0, tokenizer=None, **params) -> list[Example]:
    """A task name for `tasks.load`, or a `.jsonl` file of examples (see `save_examples`)."""
    if str(task).endswith(".jsonl") or Path(str(task)).is_file():
        return read_examples(task, n)
    from . import load

    return load(task, n, seed, tokenizer=tokenizer, **params)
