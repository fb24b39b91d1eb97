"""`Explanation`: one result object for every attribution method (relevance per input token)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_WORD_START = ("Ġ", "▁", " ")  # BPE / SentencePiece markers of a token that starts a word


@dataclass
class Explanation:
    """Relevance of each input token for one explained output f per sample.

    `relevance` [batch, seq_len] float32 on CPU; `logit` [batch] is f (the target logit at `position`,
    minus the contrast logit when one was given); padded positions have relevance 0.
    """

    relevance: torch.Tensor
    logit: torch.Tensor
    target: torch.Tensor
    method: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None
    contrast: torch.Tensor | None = None
    position: int = -1
    tokens: list[list[str]] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def conservation_error(self) -> torch.Tensor:
        """|sum_t R_t - f| / |f| per sample; ~0 for MambaLRP with the relevance-carrying biases at zero."""
        return (self.relevance.double().sum(-1) - self.logit.double()).abs() / self.logit.double().abs()

    def __len__(self) -> int:
        return self.relevance.shape[0]

    def _tokens(self, i: int) -> list[str]:
        if self.tokens is not None:
            return self.tokens[i]
        return [str(t) for t in self.input_ids[i].tolist()]

    def _real(self, i: int) -> list[int]:
        """Indices of the non-padded positions of sample i."""
        if self.attention_mask is None:
            return list(range(self.relevance.shape[1]))
        return torch.nonzero(self.attention_mask[i]).flatten().tolist()

    def to_words(self) -> list[list[tuple[str, float]]]:
        """Per sample, (word, relevance) with subword relevance summed into words (padding dropped).

        A token starts a new word if it carries a BPE/SentencePiece word-start marker, is not a
        WordPiece continuation (`##`), or the tokenizer marks no word starts at all (word level).
        """
        out = []
        for i in range(len(self)):
            toks, idx = self._tokens(i), self._real(i)
            marked = any(toks[j].startswith(_WORD_START) for j in idx)
            words: list[tuple[str, float]] = []
            for j in idx:
                tok, r = toks[j], float(self.relevance[i, j])
                starts = tok.startswith(_WORD_START) if marked else not tok.startswith("##")
                if words and not starts:
                    words[-1] = (words[-1][0] + tok.removeprefix("##"), words[-1][1] + r)
                else:
                    words.append((tok.lstrip("".join(_WORD_START)) or tok, r))
            out.append(words)
        return out

    def to_html(self, sample: int | None = None) -> str:
        """Token heatmap: red = positive, blue = negative, each sample scaled by its max |R|; the line
        wraps (tokens are separate, HTML-escaped spans)."""
        from .viz.html import token_heatmap

        rows = range(len(self)) if sample is None else [sample]
        parts = []
        for i in rows:
            toks, idx = self._tokens(i), self._real(i)
            parts.append(token_heatmap([toks[j] for j in idx], self.relevance[i, idx].tolist(),
                                       label=self.method,
                                       note=f"target {int(self.target[i])}, f = {float(self.logit[i]):.4g}"))
        return "".join(parts)

    def _repr_html_(self) -> str:
        return self.to_html()

    def plot(self, sample: int = 0, ax=None, max_tokens: int = 80):
        """Bar chart of the relevance of each (non-padded) token of one sample; returns the Axes."""
        import matplotlib.pyplot as plt

        idx = self._real(sample)[-max_tokens:]
        toks = [self._tokens(sample)[j] for j in idx]
        r = self.relevance[sample, idx].numpy()
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.28 * len(idx)), 2.6))
        ax.bar(range(len(idx)), r, color=["#d62828" if v >= 0 else "#2a5bd7" for v in r])
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(len(idx)), toks, rotation=90, fontsize=8)
        ax.set_ylabel("relevance")
        ax.set_title(f"{self.method}: target {int(self.target[sample])}")
        return ax

    def to_captum(self, true_class=None) -> list:
        """Captum `VisualizationDataRecord`s, one per sample, for `captum.attr.visualization`."""
        from captum.attr import visualization as viz

        records = []
        for i in range(len(self)):
            idx = self._real(i)
            r = self.relevance[i, idx]
            records.append(
                viz.VisualizationDataRecord(
                    r / (r.abs().max() or 1.0), float(self.logit[i]), int(self.target[i]),
                    true_class if true_class is not None else int(self.target[i]),
                    int(self.target[i]), float(r.sum()), [self._tokens(i)[j] for j in idx],
                    float(self.conservation_error[i]),
                )
            )
        return records

    # ---- persistence: tensors in safetensors, everything else as JSON in its header (no pickle)
    _TENSORS = ("relevance", "logit", "target", "input_ids", "attention_mask", "contrast")

    def save(self, path: str | Path) -> Path:
        path = Path(path).with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).contiguous() for k in self._TENSORS if getattr(self, k) is not None}
        meta = {"method": self.method, "position": self.position, "tokens": self.tokens, "params": self.params}
        save_file(tensors, str(path), metadata={"explanation": json.dumps(meta, default=str)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Explanation":
        from safetensors import safe_open

        path = Path(path).with_suffix(".safetensors")
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["explanation"])
        tensors = load_file(str(path))
        return cls(**{k: tensors.get(k) for k in cls._TENSORS}, **meta)
