"""Faithfulness explorer (notebook 02): pick the replacement token -> MoRF/LeRF curves and ΔA^F."""

from __future__ import annotations

import html
from functools import lru_cache

import ipywidgets as W

from ..evaluation import faithfulness
from .base import Explorer


def delta_table(result) -> str:
    """ΔA^F (mean ± s.e.) per method, and the paired difference to the first method with its p-value."""
    paired = result.summary.get("paired_vs_first", {})
    rows = ["<tr><th>method</th><th>ΔA<sup>F</sup></th><th>± s.e.</th><th>first − this</th><th>Wilcoxon p</th></tr>"]
    for m, v in result.summary["methods"].items():
        p = paired.get(m, {})
        rows.append(f"<tr><td>{html.escape(m)}</td><td>{v['delta_af']:.3f}</td><td>{v['delta_af_se']:.3f}</td>"
                    f"<td>{p.get('delta_af_diff', float('nan')):.3f}</td><td>{p.get('wilcoxon_p', float('nan')):.2g}</td></tr>")
    return "<table class='mlt-table'>" + "".join(rows) + "</table>"


def faithfulness_explorer(model, examples, methods, tokenizer=None, steps: int = 10, figures_dir="figures",
                          stem="02_faithfulness", replacements=("unk", "pad", "zero")) -> Explorer:
    """A replacement dropdown (`unk`, `pad`, `zero` embedding): reruns the perturbation test (cached)."""
    replacement = W.Dropdown(options=list(replacements), description="replacement")

    @lru_cache(maxsize=8)
    def compute(rep: str):
        return faithfulness(model, examples, methods, replacement=rep, steps=steps, tokenizer=tokenizer,
                            progress=False)

    def draw(box):
        res = compute(replacement.value)
        fig = res.plot()
        fig.suptitle(f"replacement: {replacement.value}, {len(examples)} inputs", fontsize=10)
        import matplotlib.pyplot as plt

        plt.close(fig)  # drawn by pyplot in the evaluation module: keep it out of the cell output
        return {f"curves_{replacement.value}": fig}, delta_table(res)

    box = Explorer([replacement], draw, primary=replacement, stem=stem, figures_dir=figures_dir,
                   figure_names="curves")
    box.replacement, box.compute = replacement, compute
    return box
