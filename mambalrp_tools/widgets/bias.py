"""Gender-bias explorer (notebook 03): pick an occupation -> a biography beside its gender-swapped twin."""

from __future__ import annotations

from functools import lru_cache

import ipywidgets as W

from ..api import explain
from ..evaluation.forward import logits_at
from ..tasks import swap_gender
from ..viz.html import token_heatmap
from .base import Explorer, label_of, new_figure, token_text


def bias_explorer(model, tokenizer, examples, method: str = "mambalrp", figures_dir="figures",
                  stem="03_gender_bias") -> Explorer:
    """An occupation dropdown over the labels of `examples` (bios examples): the first biography of
    that occupation and its twin with the gendered words swapped, each explained for the true class;
    gendered words are outlined."""
    names = {}
    for ex in examples:
        names.setdefault(label_of(tokenizer, model, int(ex.target)), ex)
    occupation = W.Dropdown(options=sorted(names), description="occupation")

    @lru_cache(maxsize=16)
    def compute(name: str):
        ex = names[name]
        twin = swap_gender(ex, tokenizer) if tokenizer is not None else swap_gender(ex)
        pair = [(ex, explain(model, ex.input_ids, target=int(ex.target), method=method, tokenizer=tokenizer)),
                (twin, explain(model, twin.input_ids, target=int(ex.target), method=method, tokenizer=tokenizer))]
        return pair

    def draw(box):
        pair = compute(occupation.value)
        fig = new_figure(8, 4.4)
        axes = fig.subplots(2, 1)
        scale = max(float(e.relevance.abs().max()) for _, e in pair) or 1.0
        parts = []
        for ax, (ex, e), which in zip(axes, pair, ("original", "gender swapped")):
            r, toks = e.relevance[0], token_text(tokenizer, ex.input_ids)
            marked = set(ex.evidence.tolist())
            ax.bar(range(len(toks)), r.numpy(), color=["#e76f51" if j in marked else "#555" for j in range(len(toks))])
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xticks(range(len(toks)), toks, rotation=90, fontsize=7)
            p = float(logits_at(model, ex.input_ids[None])[0].softmax(-1)[int(ex.target)])
            head = f"{which} ({(ex.meta or {}).get('gender', '?')}): p({occupation.value}) = {p:.2f}"
            ax.set_title(head + "  (gendered words in orange)", fontsize=9)
            ax.set_ylabel("relevance")
            parts.append(token_heatmap(toks, r.tolist(), label=f"{method}, {head}", marked=sorted(marked),
                                       scale=scale))
        return {f"swap_{occupation.value}": fig}, "".join(parts)

    box = Explorer([occupation], draw, primary=occupation, stem=stem, figures_dir=figures_dir,
                   figure_names="pair of biographies")
    box.occupation, box.compute = occupation, compute
    return box
