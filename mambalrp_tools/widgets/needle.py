"""Needle explorer (notebooks 00 and 05): context length, needle depth and method -> relevance."""

from __future__ import annotations

from functools import lru_cache

import ipywidgets as W

from ..api import explain
from ..methods import list_methods
from ..viz.html import token_heatmap, window
from .base import Explorer, label_of, new_figure, token_text

SLOW = {"integrated_gradients", "smoothgrad"}


def needle_explorer(model, tokenizer=None, methods=("mambalrp", "gradient_x_input", "integrated_gradients"),
                    context_length=256, depth=0.5, max_context_length=4096, seed=0, figures_dir="figures",
                    stem="05_needle_in_haystack", heatmap_tokens: int = 160) -> Explorer:
    """Sliders for context length (`mlt-context`) and needle depth (`mlt-depth`), a method picker
    (`mlt-method`) and an export button.

    Each change draws one needle example (`tasks.load("needle", ...)`), explains the model's answer and
    shows the relevance over positions (needle shaded) and a token heatmap of a window of
    `heatmap_tokens` tokens around the needle (the title says which window). Results are cached.
    """
    from .. import tasks

    style = {"description_width": "initial"}
    length = W.IntSlider(value=context_length, min=64, max=max_context_length, step=64, description="context length",
                         continuous_update=False, style=style).add_class("mlt-context")
    where = W.FloatSlider(value=depth, min=0.0, max=1.0, step=0.05, description="needle depth",
                          continuous_update=False, style=style).add_class("mlt-depth")
    method = W.Dropdown(options=[m for m in methods if m in list_methods()], description="method",
                        style=style).add_class("mlt-method")

    @lru_cache(maxsize=64)
    def compute(L: int, d: float, m: str):
        ex = tasks.load("needle", n=1, seed=seed, tokenizer=tokenizer, context_length=L, depth=d)[0]
        expl = explain(model, ex.input_ids, method=m, tokenizer=tokenizer)
        return ex, expl

    def draw(box):
        L, d, m = length.value, round(where.value, 2), method.value
        if m in SLOW:
            box.step(0.1, f"{m} on {L} tokens (slow method)")
        ex, expl = compute(L, d, m)
        box.step(0.8)
        r = expl.relevance[0]
        T = r.shape[0]
        lo, hi = int(ex.evidence.min()), int(ex.evidence.max()) + 1
        answer, expected = label_of(tokenizer, model, int(expl.target[0])), label_of(tokenizer, model, ex.target)
        pos = r.clamp(min=0)
        share = float(pos[lo:hi].sum() / pos.sum()) if float(pos.sum()) > 0 else float("nan")
        fig = new_figure(8, 2.6)
        ax = fig.subplots()
        ax.plot(r.numpy(), lw=0.8, color="#333")
        ax.axvspan(lo, hi, color="#f4a261", alpha=0.5, label="needle")
        ax.set(xlabel="position", ylabel="relevance", xlim=(0, T - 1))
        ax.set_title(f"{m}: answer {answer} (expected {expected}); {T} tokens, depth {d:.2f}, "
                     f"needle share {share:.0%}", fontsize=9)
        ax.legend(loc="upper left", fontsize=8)
        a, b = window(T, list(range(lo, hi)) + [T - 1] * (T <= heatmap_tokens), heatmap_tokens)
        toks = token_text(tokenizer, ex.input_ids[a:b])
        markup = token_heatmap(toks, r[a:b].tolist(), label=f"{m}, window around the needle (outlined)",
                               marked=[j - a for j in range(lo, hi) if a <= j < b], offset=a, total=T,
                               scale=float(r.abs().max()) or 1.0)
        return {f"needle_{m}_{L}_{int(round(100 * d))}": fig}, markup

    box = Explorer([W.HBox([length, where]), method], draw, primary=length, stem=stem, figures_dir=figures_dir,
                   figure_names="needle figure")
    box.length, box.depth, box.method, box.compute = length, where, method, compute
    return box
