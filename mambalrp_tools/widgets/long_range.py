"""Long-range explorer (notebook 04): context length and k -> where the k most relevant tokens are."""

from __future__ import annotations

from functools import lru_cache

import ipywidgets as W
import numpy as np

from ..api import explain
from ..evaluation.long_range import top_k_distances
from .base import Explorer, new_figure


def long_range_explorer(model, tokenizer=None, methods=("mambalrp", "gradient_x_input"), n: int = 4,
                        context_length: int = 256, max_context_length: int = 2048, k: int = 10, seed: int = 0,
                        figures_dir="figures", stem="04_long_range") -> Explorer:
    """Sliders for context length (needle examples of that length) and k: the histogram of distances
    from the explained (last) position to its k most relevant tokens, per method. Relevance is cached
    per context length, so moving k is instant."""
    from .. import tasks

    style = {"description_width": "initial"}
    length = W.IntSlider(value=context_length, min=64, max=max_context_length, step=64, description="context length",
                         continuous_update=False, style=style).add_class("mlt-context")
    top = W.IntSlider(value=k, min=1, max=50, description="k", continuous_update=False, style=style)

    @lru_cache(maxsize=16)
    def compute(L: int):
        exs = tasks.load("needle", n=n, seed=seed, tokenizer=tokenizer, context_length=L)
        return {m: [explain(model, ex.input_ids, method=m, tokenizer=tokenizer).relevance[0] for ex in exs]
                for m in methods}

    def draw(box):
        box.step(0.1, f"{len(methods)} methods × {n} inputs of {length.value} tokens")
        rel = compute(length.value)
        fig = new_figure(7, 3.2)
        ax = fig.subplots()
        dist = {m: [d for r in rs for d in top_k_distances(r, top.value)] for m, rs in rel.items()}
        edges = np.histogram_bin_edges([d for v in dist.values() for d in v] or [0, 1], bins=30)
        for m, v in dist.items():
            ax.hist(v, bins=edges, histtype="step", lw=1.5, label=f"{m} (median {np.median(v):.0f})")
        ax.set(xlabel="distance from the explained position (tokens)", ylabel="count")
        ax.set_title(f"top-{top.value} relevant tokens, {n} inputs of {length.value} tokens", fontsize=9)
        ax.legend(fontsize=8)
        return {f"distances_{length.value}_k{top.value}": fig}, None

    box = Explorer([W.HBox([length, top])], draw, primary=length, stem=stem, figures_dir=figures_dir,
                   figure_names="histogram")
    box.length, box.k, box.compute = length, top, compute
    return box
