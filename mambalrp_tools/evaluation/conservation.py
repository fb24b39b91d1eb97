"""Conservation (paper Fig. 3): sum_t R_t against the explained output f, per example and method.

MambaLRP conserves (sum R = f exactly when the relevance-carrying biases are zero; the rest of f is
absorbed by the biases otherwise); Gradient x Input does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engine import Result, run_analysis
from .forward import relevance, stack_ids, targets_for
from .stats import mean_se


@dataclass(repr=False)
class ConservationResult(Result):
    def plot(self):
        """One scatter per method: sum_t R_t (y) against f (x), with the identity line."""
        import matplotlib.pyplot as plt

        methods = list(self.summary["methods"])
        fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 3.4), squeeze=False)
        for ax, method in zip(axes[0], methods):
            recs = [r for r in self.records if r["method"] == method]
            f = np.array([r["f"] for r in recs])
            s = np.array([r["sum_r"] for r in recs])
            lo, hi = float(min(f.min(), s.min())), float(max(f.max(), s.max()))
            ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, zorder=0)
            ax.scatter(f, s, s=9, alpha=0.7)
            ax.set_xlabel("f (explained logit)")
            ax.set_ylabel(r"$\sum_t R_t$")
            ax.set_title(f"{method}\nmedian rel. err {self.summary['methods'][method]['median_rel_error']:.2g}",
                         fontsize=9)
        fig.tight_layout()
        return fig


def conservation(model, examples, methods=("mambalrp", "gradient_x_input"), *, target: str = "pred",
                 position: int = -1, batch_size: int = 1, out=None, overwrite: bool = False,
                 progress: bool = True, model_name: str | None = None, info: dict | None = None
                 ) -> ConservationResult:
    """A table of (sum_t R_t, f) per example and method, and a scatter plot (`result.plot()`)."""

    def compute(batch, spec):
        tgt = targets_for(model, batch, target, position)
        rel, f, tgt = relevance(model, spec, stack_ids(batch), tgt, position=position, sample=batch[0][0])
        s = rel.double().sum(-1)
        return [{"sample": sid, "target": int(tgt[i]), "f": float(f[i]), "sum_r": float(s[i]),
                 "abs_error": float(abs(s[i] - f[i])),
                 "rel_error": float(abs(s[i] - f[i]) / max(abs(float(f[i])), 1e-12))}
                for i, (sid, _) in enumerate(batch)]

    return run_analysis("conservation", model, examples, methods, compute, summarize,
                        params={"target": target, "position": position}, result=ConservationResult,
                        batch_size=batch_size, out=out, overwrite=overwrite, progress=progress,
                        model_name=model_name, info=info)


def summarize(records, specs) -> dict:
    summary = {"methods": {}}
    for spec in specs:
        recs = [r for r in records if r["method"] == spec.label]
        f = np.array([r["f"] for r in recs])
        s = np.array([r["sum_r"] for r in recs])
        rel_err = np.array([r["rel_error"] for r in recs])
        summary["methods"][spec.label] = {
            "median_rel_error": float(np.median(rel_err)) if len(recs) else float("nan"),
            "max_rel_error": float(rel_err.max()) if len(recs) else float("nan"),
            "mean_rel_error": mean_se(rel_err)[0],
            "pearson_r": float(np.corrcoef(f, s)[0, 1]) if len(recs) > 2 and f.std() > 0 and s.std() > 0
            else float("nan"),
            "n": len(recs),
        }
    return summary
