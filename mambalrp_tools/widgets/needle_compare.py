"""Needle comparison (notebook 05): two or more needle models on the same example, alone or side by side."""

from __future__ import annotations

import html
import re
from functools import lru_cache

import ipywidgets as W

from .base import Explorer, new_figure
from .needle import SLOW, needle_case, needle_controls, needle_markup, needle_view, plot_needle

SIDE_BY_SIDE = "side by side"


def needle_comparison(models: dict, methods=("mambalrp", "gradient_x_input", "integrated_gradients"),
                      context_length=256, depth=0.5, max_context_length=4096, seed=0, figures_dir="figures",
                      stem="05_needle_in_haystack", heatmap_tokens: int = 160) -> Explorer:
    """A model dropdown (`mlt-model`, the primary control): each model of `models` ({label: (model,
    tokenizer)}) alone, or all of them "side by side"; the sliders (`mlt-context`, `mlt-depth`) and the
    method picker (`mlt-method`) of `needle_explorer`, shared by every panel.

    Every panel draws the needle example of that context length and depth (one example when the models
    share a tokenizer) with the model's own answer explained; it is titled with the model's label, its
    answer, whether that is correct, and the needle's share of the positive relevance. The token
    heatmaps sit next to each other (`mlt-panel`). Each (model, length, depth, method) is cached.
    """
    models = {str(k): v for k, v in models.items()}
    if len(models) < 2:
        raise ValueError(f"needle_comparison compares at least two models, got {len(models)}; "
                         "use needle_explorer for one")
    if SIDE_BY_SIDE in models:
        raise ValueError(f"{SIDE_BY_SIDE!r} is the dropdown's option for all models; give the model another label")
    labels = list(models)
    which = W.Dropdown(options=[*labels, SIDE_BY_SIDE], value=SIDE_BY_SIDE, description="model",
                       style={"description_width": "initial"}).add_class("mlt-model")
    length, where, method = needle_controls(context_length, depth, max_context_length, methods)

    @lru_cache(maxsize=64)
    def compute(label: str, L: int, d: float, m: str):
        model, tokenizer = models[label]
        return needle_case(model, tokenizer, L, d, m, seed)

    def draw(box):
        L, d, m = length.value, round(where.value, 2), method.value
        shown = labels if which.value == SIDE_BY_SIDE else [which.value]
        views = []
        for i, label in enumerate(shown):
            box.step(i / len(shown), f"{label}: {m} on {L} tokens" + (" (slow method)" if m in SLOW else ""))
            model, tokenizer = models[label]
            views.append((label, tokenizer, needle_view(model, tokenizer, *compute(label, L, d, m))))
        box.step(0.9)
        fig = new_figure(8 if len(shown) == 1 else 4.6 * len(shown), 2.9)
        for ax, (label, _, v) in zip(fig.subplots(1, len(shown), squeeze=False)[0], views):
            verdict = "correct" if v.correct else f"wrong, expected {v.expected}"
            plot_needle(ax, v, f"{label}\nanswer {v.answer} ({verdict}), needle share {v.share:.0%}")
        fig.suptitle(f"{m}: {views[0][2].relevance.shape[0]} tokens, depth {d:.2f}", fontsize=9)
        panels = [f"<div class='mlt-panel' title='{html.escape(label, quote=True)}' style='flex:1 1 0;min-width:0'>"
                  + needle_markup(v, tok, f"{label}: {m}, window around the needle (outlined)", heatmap_tokens)
                  + "</div>" for label, tok, v in views]
        markup = ("<div class='mlt-panels' style='display:flex;gap:16px;align-items:flex-start'>"
                  + "".join(panels) + "</div>")
        slug = re.sub(r"[^A-Za-z0-9]+", "_", which.value).strip("_").lower()
        return {f"needle_compare_{slug}_{m}_{L}_{int(round(100 * d))}": fig}, markup

    box = Explorer([which, W.HBox([length, where]), method], draw, primary=which, stem=stem,
                   figures_dir=figures_dir, figure_names="comparison figure")
    box.model, box.length, box.depth, box.method, box.compute = which, length, where, method, compute
    return box
