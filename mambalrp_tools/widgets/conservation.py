"""Conservation explorer (notebook 01): pick a method or rule ablation -> ΣR against f."""

from __future__ import annotations

import ipywidgets as W
import numpy as np

from .base import Explorer, new_figure


def scatter(ax, result, method: str):
    """ΣR (y) against f (x) of one method of a `ConservationResult`, with the identity line."""
    recs = [r for r in result.records if r["method"] == method]
    f, s = np.array([r["f"] for r in recs]), np.array([r["sum_r"] for r in recs])
    lo, hi = float(min(f.min(), s.min())), float(max(f.max(), s.max()))
    ax.plot([lo, hi], [lo, hi], color="0.55", lw=0.9, zorder=0, label="ΣR = f")
    ax.scatter(f, s, s=12, alpha=0.75)
    err = result.summary["methods"][method]["median_rel_error"]
    ax.set(xlabel="f (explained logit)", ylabel="ΣR (sum of relevance)")
    ax.set_title(f"{method}: median |ΣR−f|/|f| = {err:.2g}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")


def conservation_explorer(result, figures_dir="figures", stem="01_conservation") -> Explorer:
    """A method dropdown over the methods of `result` (an `evaluation.conservation` result)."""
    method = W.Dropdown(options=list(result.summary["methods"]), description="method").add_class("mlt-method")

    def draw(box):
        fig = new_figure(4.2, 3.6)
        scatter(fig.subplots(), result, method.value)
        return {f"scatter_{method.value.replace(':', '_')}": fig}, None

    box = Explorer([method], draw, primary=method, stem=stem, figures_dir=figures_dir, figure_names="scatter")
    box.method = method
    return box
