"""Needle explorer (notebooks 00 and 05): context length, needle depth and method -> relevance.

The pieces here (controls, one cached example + explanation, one panel's plot and token heatmap) are
shared with the model comparison in `needle_compare.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import ipywidgets as W
import torch

from ..api import explain
from ..evaluation.needle import needle_positions, needle_share
from ..methods import list_methods
from ..viz.html import token_heatmap, window
from .base import Explorer, label_of, new_figure, token_text

SLOW = {"integrated_gradients", "smoothgrad"}


def needle_controls(context_length=256, depth=0.5, max_context_length=4096,
                    methods=("mambalrp", "gradient_x_input", "integrated_gradients")):
    """The context length slider (`mlt-context`), the depth slider (`mlt-depth`), the method picker
    (`mlt-method`), all without continuous updates."""
    style = {"description_width": "initial"}
    length = W.IntSlider(value=context_length, min=64, max=max_context_length, step=64, description="context length",
                         continuous_update=False, style=style).add_class("mlt-context")
    where = W.FloatSlider(value=depth, min=0.0, max=1.0, step=0.05, description="needle depth",
                          continuous_update=False, style=style).add_class("mlt-depth")
    method = W.Dropdown(options=[m for m in methods if m in list_methods()], description="method",
                        style=style).add_class("mlt-method")
    return length, where, method


def needle_case(model, tokenizer, L: int, d: float, m: str, seed: int = 0):
    """One needle example of `L` tokens with the needle at depth `d`, and the explanation (method `m`) of
    the model's answer -> (Example, Explanation)."""
    from .. import tasks

    ex = tasks.load("needle", n=1, seed=seed, tokenizer=tokenizer, context_length=L, depth=d)[0]
    return ex, explain(model, ex.input_ids, method=m, tokenizer=tokenizer)


@dataclass(frozen=True)
class NeedleView:
    """What one panel shows: the relevance, the needle span [lo, hi), the answer and the needle's share
    of the positive relevance."""

    ex: object
    relevance: torch.Tensor
    lo: int
    hi: int
    answer: str
    expected: str
    correct: bool
    share: float


def needle_view(model, tokenizer, ex, expl) -> NeedleView:
    """The needle is what `needle_grid` calls the needle (its sentence), so the share is the grid's."""
    r = expl.relevance[0]
    needle = needle_positions(ex)
    lo, hi = int(needle.min()), int(needle.max()) + 1
    share = needle_share(r, needle)
    return NeedleView(ex, r, lo, hi, label_of(tokenizer, model, int(expl.target[0])),
                      label_of(tokenizer, model, ex.target), int(expl.target[0]) == int(ex.target), share)


def plot_needle(ax, view: NeedleView, title: str):
    """Relevance over positions, the needle shaded."""
    T = view.relevance.shape[0]
    ax.plot(view.relevance.numpy(), lw=0.8, color="#333")
    ax.axvspan(view.lo, view.hi, color="#f4a261", alpha=0.5, label="needle")
    ax.set(xlabel="position", ylabel="relevance", xlim=(0, T - 1))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)


def needle_markup(view: NeedleView, tokenizer, label: str, heatmap_tokens: int = 160) -> str:
    """The token heatmap (escaped) of a window of `heatmap_tokens` tokens around the needle (outlined)."""
    r, lo, hi = view.relevance, view.lo, view.hi
    T = r.shape[0]
    a, b = window(T, list(range(lo, hi)) + [T - 1] * (T <= heatmap_tokens), heatmap_tokens)
    toks = token_text(tokenizer, view.ex.input_ids[a:b])
    return token_heatmap(toks, r[a:b].tolist(), label=label, marked=[j - a for j in range(lo, hi) if a <= j < b],
                         offset=a, total=T, scale=float(r.abs().max()) or 1.0)


def needle_explorer(model, tokenizer=None, methods=("mambalrp", "gradient_x_input", "integrated_gradients"),
                    context_length=256, depth=0.5, max_context_length=4096, seed=0, figures_dir="figures",
                    stem="05_needle_in_haystack", heatmap_tokens: int = 160) -> Explorer:
    """Sliders for context length (`mlt-context`) and needle depth (`mlt-depth`), a method picker
    (`mlt-method`) and an export button.

    Each change draws one needle example (`tasks.load("needle", ...)`), explains the model's answer and
    shows the relevance over positions (needle shaded) and a token heatmap of a window of
    `heatmap_tokens` tokens around the needle (the title says which window). Results are cached.
    """
    length, where, method = needle_controls(context_length, depth, max_context_length, methods)

    @lru_cache(maxsize=64)
    def compute(L: int, d: float, m: str):
        return needle_case(model, tokenizer, L, d, m, seed)

    def draw(box):
        L, d, m = length.value, round(where.value, 2), method.value
        if m in SLOW:
            box.step(0.1, f"{m} on {L} tokens (slow method)")
        v = needle_view(model, tokenizer, *compute(L, d, m))
        box.step(0.8)
        fig = new_figure(8, 2.6)
        plot_needle(fig.subplots(), v, f"{m}: answer {v.answer} (expected {v.expected}); {v.relevance.shape[0]} "
                                       f"tokens, depth {d:.2f}, needle share {v.share:.0%}")
        markup = needle_markup(v, tokenizer, f"{m}, window around the needle (outlined)", heatmap_tokens)
        return {f"needle_{m}_{L}_{int(round(100 * d))}": fig}, markup

    box = Explorer([W.HBox([length, where]), method], draw, primary=length, stem=stem, figures_dir=figures_dir,
                   figure_names="needle figure")
    box.length, box.depth, box.method, box.compute = length, where, method, compute
    return box
