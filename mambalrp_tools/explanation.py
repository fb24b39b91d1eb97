"""`Explanation`: one result object for every attribution method and for generations (relevance per input token)."""

from __future__ import annotations

import dataclasses
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_WORD_START = ("Ġ", "▁", " ")  # BPE / SentencePiece markers of a token that starts a word


@dataclass
class Explanation:
    """Relevance of each input token for one explained output f per sample, or for several (output axis).

    `relevance` [batch, seq_len] float32 on CPU; `logit` [batch] is f (the target logit at `position`,
    minus the contrast logit when one was given); padded positions have relevance 0.

    With an output axis (`output_positions` [n_out] given, e.g. from `explain_generation`):
    `relevance` [batch, n_out, seq_len], `logit` and `target` [batch, n_out]; output j is the logit
    of `target[:, j]` read at `output_positions[j]`, explained over the tokens up to that position
    (later positions have relevance 0). `output(j)` is output j alone, as a plain Explanation.

    `completeness`: what sum_t R_t is compared with ("f", "f - f(baseline)" with `baseline_logit`
    = f at the baseline, or None), from the method's registration. `params`: the method's arguments;
    `info`: model, backend, package version and the resolved rules.
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
    completeness: str | None = "f"
    baseline_logit: torch.Tensor | None = None
    output_positions: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def conservation_error(self) -> torch.Tensor | None:
        """|sum_t R_t - target| / |target| per sample (and output), target being the method's completeness
        target: f (MambaLRP ~0 with the relevance-carrying biases at zero; Gradient x Input does not
        conserve) or f - f(baseline) (Integrated Gradients, up to its integration error). None for
        methods whose relevance does not decompose f (saliency, rollouts, random scores)."""
        if self.completeness == "f":
            target = self.logit.double()
        elif self.completeness == "f - f(baseline)" and self.baseline_logit is not None:
            target = self.logit.double() - self.baseline_logit.double()
        else:
            return None
        return (self.relevance.double().sum(-1) - target).abs() / target.abs()

    def __len__(self) -> int:
        return self.relevance.shape[0]

    def output(self, j: int) -> "Explanation":
        """Output j of an output axis as a plain Explanation over the tokens up to its position."""
        if self.output_positions is None:
            raise ValueError("this explanation has no output axis")
        end = int(self.output_positions[j]) + 1
        pick = (lambda t: None if t is None else t[:, j])
        return Explanation(
            relevance=self.relevance[:, j, :end], logit=self.logit[:, j], target=self.target[:, j],
            method=self.method, input_ids=self.input_ids[:, :end],
            attention_mask=None if self.attention_mask is None else self.attention_mask[:, :end],
            contrast=pick(self.contrast), position=-1,
            tokens=None if self.tokens is None else [row[:end] for row in self.tokens],
            params=self.params, completeness=self.completeness, baseline_logit=pick(self.baseline_logit),
            info=self.info,
        )

    # GenerationExplanation's names (evaluation.explain_generation), kept for one release
    @property
    def n_prompt(self) -> int:
        """With an output axis: the number of prompt tokens (the first output is read at its last one)."""
        return int(self._outputs()[0]) + 1

    @property
    def output_ids(self) -> torch.Tensor:
        """With an output axis: the explained output tokens of sample 0 [n_out]."""
        self._outputs()
        return self.target[0]

    @property
    def logits(self) -> torch.Tensor:
        """With an output axis: the explained logit of each output of sample 0 [n_out]."""
        self._outputs()
        return self.logit[0]

    @property
    def token_attr(self) -> torch.Tensor:
        """With an output axis: [n_out, n_prompt], sample 0's relevance over the prompt (Captum's layout)."""
        return self.relevance[0, :, : self.n_prompt]

    def _outputs(self) -> torch.Tensor:
        if self.output_positions is None:
            raise ValueError("this explanation has no output axis")
        return self.output_positions

    def _tokens(self, i: int) -> list[str]:
        if self.tokens is not None:
            return self.tokens[i]
        return [str(t) for t in self.input_ids[i].tolist()]

    def _real(self, i: int) -> list[int]:
        """Indices of the non-padded positions of sample i."""
        if self.attention_mask is None:
            return list(range(self.relevance.shape[-1]))
        return torch.nonzero(self.attention_mask[i]).flatten().tolist()

    def _words(self, i: int) -> list[tuple[str, list[int]]]:
        """Sample i's words as (word, token positions), padding dropped.

        A token starts a new word if it carries a BPE/SentencePiece word-start marker, is not a
        WordPiece continuation (`##`), or the tokenizer marks no word starts at all (word level).
        """
        toks, idx = self._tokens(i), self._real(i)
        marked = any(toks[j].startswith(_WORD_START) for j in idx)
        words: list[tuple[str, list[int]]] = []
        for j in idx:
            tok = toks[j]
            starts = tok.startswith(_WORD_START) if marked else not tok.startswith("##")
            if words and not starts:
                words[-1] = (words[-1][0] + tok.removeprefix("##"), words[-1][1] + [j])
            else:
                words.append((tok.lstrip("".join(_WORD_START)) or tok, [j]))
        return words

    def to_words(self) -> "Explanation":
        """The same explanation over words: subword relevance summed into words (see `_words`).

        Samples are left-padded to the longest word count (mask 0, word ""); `input_ids` holds the id
        of each word's first token; `position` becomes the explained token's word. An output axis is
        kept (one sample only), each output's position moved to the word holding its token.
        """
        groups = [self._words(i) for i in range(len(self))]
        if self.output_positions is not None and len(self) != 1:
            raise ValueError("to_words of an explanation with an output axis needs a single sample")
        width = max(len(g) for g in groups)
        rel = self.relevance.new_zeros(*self.relevance.shape[:-1], width)
        ids = torch.zeros(len(self), width, dtype=self.input_ids.dtype)
        mask = torch.zeros(len(self), width, dtype=torch.long)
        tokens = []
        where = {}  # token position -> word position (sample 0; the output axis has one sample)
        for i, words in enumerate(groups):
            pad = width - len(words)
            tokens.append([""] * pad + [w for w, _ in words])
            mask[i, pad:] = 1
            for k, (_, pos) in enumerate(words):
                rel[i, ..., pad + k] = self.relevance[i, ..., pos].sum(-1)
                ids[i, pad + k] = self.input_ids[i, pos[0]]
                if i == 0:
                    where.update({p: pad + k for p in pos})
        out_pos = None
        if self.output_positions is not None:
            out_pos = torch.tensor([where[int(p)] for p in self.output_positions])
        # the explained token's word (in sample 0), counted from the end when `position` was
        position = where.get(self.position % self.relevance.shape[-1])
        position = -1 if position is None else position - width if self.position < 0 else position
        return dataclasses.replace(
            self, relevance=rel, input_ids=ids, attention_mask=None if bool(mask.all()) else mask,
            position=position, tokens=tokens, output_positions=out_pos, info={**self.info, "unit": "word"},
        )

    def to_html(self, sample: int | None = None) -> str:
        """Token heatmap: red = positive, blue = negative, each sample scaled by its max |R|
        (with an output axis: one heatmap per output)."""
        if self.output_positions is not None:
            return "".join(self.output(j).to_html(sample) for j in range(len(self.output_positions)))
        rows = range(len(self)) if sample is None else [sample]
        parts = [f"<div style='font-family:monospace;line-height:1.9'><b>{html.escape(self.method)}</b>"]
        for i in rows:
            toks, idx = self._tokens(i), self._real(i)
            scale = float(self.relevance[i].abs().max()) or 1.0
            spans = []
            for j in idx:
                r = float(self.relevance[i, j])
                a = min(abs(r) / scale, 1.0)
                rgb = "220,40,40" if r >= 0 else "40,90,220"
                spans.append(
                    f"<span title='{r:.4g}' style='background:rgba({rgb},{a:.3f});padding:1px 2px;"
                    f"margin:1px;border-radius:3px'>{html.escape(toks[j])}</span>"
                )
            parts.append(
                f"<div>target {int(self.target[i])}, f = {float(self.logit[i]):.4g}: {''.join(spans)}</div>"
            )
        return "".join(parts) + "</div>"

    def _repr_html_(self) -> str:
        return self.to_html()

    def plot(self, sample: int = 0, ax=None, max_tokens: int = 80, *, columns=None, prompt_only: bool = True):
        """Bar chart of the relevance of each (non-padded) token of one sample; returns the Axes.

        With an output axis: a heatmap output token x source token instead (diverging, centred at 0,
        each row scaled by its max |R|), over the prompt only (`prompt_only`) or the whole sequence,
        or over the positions `columns`.
        """
        import matplotlib.pyplot as plt

        if self.output_positions is not None:
            return self._plot_outputs(sample, ax, columns, prompt_only)
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

    def _plot_outputs(self, sample, ax, columns, prompt_only):
        import matplotlib.pyplot as plt

        mat = self.relevance[sample]
        if prompt_only:
            mat = mat[:, : self.n_prompt]
        if columns is not None:
            mat = mat[:, torch.as_tensor(columns)]
        mat = mat / mat.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        if ax is None:
            _, ax = plt.subplots(figsize=(max(3.0, 0.18 * mat.shape[1] + 1.5), max(2.5, 0.18 * mat.shape[0] + 1.2)))
        im = ax.imshow(mat.numpy(), cmap="bwr", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_xlabel("source token position" + ("" if columns is None else " (selected)"))
        ax.set_ylabel("output token")
        ax.set_title(self.method)
        ax.figure.colorbar(im, ax=ax, fraction=0.04)
        return ax

    def to_captum(self, true_class=None) -> list:
        """Captum `VisualizationDataRecord`s, one per sample (per sample and output with an output
        axis), for `captum.attr.visualization`."""
        from captum.attr import visualization as viz

        if self.output_positions is not None:
            return [rec for j in range(len(self.output_positions)) for rec in self.output(j).to_captum(true_class)]
        error = self.conservation_error
        records = []
        for i in range(len(self)):
            idx = self._real(i)
            r = self.relevance[i, idx]
            records.append(
                viz.VisualizationDataRecord(
                    r / (r.abs().max() or 1.0), float(self.logit[i]), int(self.target[i]),
                    true_class if true_class is not None else int(self.target[i]),
                    int(self.target[i]), float(r.sum()), [self._tokens(i)[j] for j in idx],
                    float("nan") if error is None else float(error[i]),
                )
            )
        return records

    # ---- persistence: tensors in safetensors, everything else as JSON in its header (no pickle)
    _TENSORS = ("relevance", "logit", "target", "input_ids", "attention_mask", "contrast", "baseline_logit",
                "output_positions")

    def save(self, path: str | Path) -> Path:
        path = Path(path).with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).contiguous() for k in self._TENSORS if getattr(self, k) is not None}
        meta = {"method": self.method, "position": self.position, "tokens": self.tokens, "params": self.params,
                "completeness": self.completeness, "info": self.info}
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
