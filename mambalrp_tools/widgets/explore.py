"""`explore()` (notebook 00): type a text, pick a method, a target and the rules -> token heatmap."""

from __future__ import annotations

from functools import lru_cache

import ipywidgets as W
import torch

from ..api import explain
from ..evaluation.forward import logits_at
from ..methods import list_methods
from ..viz.html import token_heatmap
from .base import Explorer, label_of, new_figure, token_text

RULES = ("silu", "ssm", "gate", "norm")


def explore(model, tokenizer, text: str = "", methods=("mambalrp", "gradient_x_input", "lrp_ln",
            "integrated_gradients", "attention_rollout"), figures_dir="figures", stem="00_quickstart",
            max_tokens: int = 48) -> Explorer:
    """A text box (`mlt-text`, redraws on Enter), a method dropdown (`mlt-method`), a target picker (the
    top-5 predictions at the last position) and the four MambaLRP rule toggles (used by `mambalrp`).

    Shows the token heatmap, ΣR, the explained logit f and the conservation error |ΣR - f| / |f|; the
    exported figure is a bar chart of the last `max_tokens` tokens.
    """
    style = {"description_width": "initial"}
    box_text = W.Text(value=text, description="text", continuous_update=False, style=style,
                      layout=W.Layout(width="95%")).add_class("mlt-text")
    method = W.Dropdown(options=[m for m in methods if m in list_methods()], description="method",
                        style=style).add_class("mlt-method")
    target = W.Dropdown(options=[("top prediction", -1)], value=-1, description="target", style=style).add_class(
        "mlt-target")
    rules = {r: W.Checkbox(value=True, description=f"{r} rule", indent=False, layout=W.Layout(width="7em"))
             .add_class(f"mlt-rule-{r}") for r in RULES}
    state = {"text": None}

    @lru_cache(maxsize=64)
    def compute(text: str, m: str, tgt: int, on: tuple):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        kwargs = {"rules": dict(zip(RULES, on))} if m == "mambalrp" else {}
        return ids, explain(model, ids, method=m, target=tgt, tokenizer=tokenizer, **kwargs)

    def top5(text: str):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        if ids.shape[1] == 0:
            raise ValueError("type a text first")
        p = logits_at(model, ids).softmax(-1)[0]
        vals, idx = p.topk(min(5, p.numel()))
        return [(f"{label_of(tokenizer, model, int(i))}  p={float(v):.2f}", int(i)) for v, i in zip(vals, idx)]

    def draw(box):
        if box_text.value != state["text"]:  # a new text: new target options, the top prediction selected
            options = top5(box_text.value)
            box.quiet = True
            try:
                target.options, target.value = options, options[0][1]
            finally:
                box.quiet = False
            state["text"] = box_text.value
        m = method.value
        ids, expl = compute(box_text.value, m, int(target.value), tuple(rules[r].value for r in RULES))
        r, f = expl.relevance[0], float(expl.logit[0])
        toks = token_text(tokenizer, ids[0])
        s, err = float(r.sum()), float(expl.conservation_error[0])
        label = label_of(tokenizer, model, int(expl.target[0]))
        ruled = "" if m != "mambalrp" else " rules: " + ", ".join(k for k in RULES if rules[k].value) or " no rules"
        head = f"{m}: target {label}; ΣR = {s:.4g}, f = {f:.4g}, conservation error {err:.2g};{ruled}"
        fig = new_figure(8, 2.8)
        ax = fig.subplots()
        shown = list(range(max(0, len(toks) - max_tokens), len(toks)))
        ax.bar(range(len(shown)), r[shown].numpy(), color=["#d62828" if r[j] >= 0 else "#2a5bd7" for j in shown])
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(len(shown)), [toks[j] for j in shown], rotation=90, fontsize=8)
        ax.set_ylabel("relevance")
        ax.set_title(head if len(shown) == len(toks) else f"{head}\nlast {len(shown)} of {len(toks)} tokens",
                     fontsize=9)
        return {f"explore_{m}": fig}, token_heatmap(toks, r.tolist(), label=head)

    rows = [box_text, W.HBox([method, target]), W.HBox(list(rules.values()))]
    box = Explorer(rows, draw, primary=method, stem=stem, figures_dir=figures_dir, figure_names="relevance plot")
    box.text, box.method, box.target, box.rules, box.compute = box_text, method, target, rules, compute
    return box
