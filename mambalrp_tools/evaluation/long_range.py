"""Long-range dependencies: how far back the k most relevant tokens sit from the explained position.

distance = (explained position) - (position of the token), over the k tokens of highest relevance
(signed: the most positive evidence). `relative` divides by the number of tokens before the
explained position, so different lengths compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .engine import Result, run_analysis
from .forward import relevance, stack_ids, targets_for


def top_k_distances(rel: torch.Tensor, k: int, position: int = -1) -> list[int]:
    T = rel.shape[-1]
    pos = position % T
    visible = rel[: pos + 1]  # a causal model gives later tokens no relevance
    idx = torch.topk(visible.double(), min(k, visible.numel())).indices
    return sorted(int(pos - i) for i in idx)


@dataclass(repr=False)
class LongRangeResult(Result):
    def plot(self, relative: bool = False, bins: int = 30):
        """Histogram of the distances of the k most relevant tokens, one line per method."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        key = "relative" if relative else "distances"
        allv = [v for r in self.records for v in r[key]]
        edges = np.histogram_bin_edges(allv or [0, 1], bins=bins)
        for method in self.summary["methods"]:
            vals = [v for r in self.records if r["method"] == method for v in r[key]]
            ax.hist(vals, bins=edges, histtype="step", lw=1.4, density=True, label=method)
        ax.set_xlabel("relative distance" if relative else "distance to the explained position (tokens)")
        ax.set_ylabel("density")
        ax.set_title(f"top-{self.params['k']} relevant tokens")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def long_range(model, examples, k: int = 10, methods=("mambalrp",), *, target: str = "pred", position: int = -1,
               batch_size: int = 1, out=None, overwrite: bool = False, progress: bool = True,
               model_name: str | None = None, info: dict | None = None) -> LongRangeResult:
    """Distances from the explained position to its k most relevant tokens, per example and method."""

    def compute(batch, spec):
        tgt = targets_for(model, batch, target, position)
        rel, f, tgt = relevance(model, spec, stack_ids(batch), tgt, position=position, sample=batch[0][0])
        recs = []
        for i, (sid, ex) in enumerate(batch):
            T = rel.shape[1]
            d = top_k_distances(rel[i], k, position)
            recs.append({"sample": sid, "target": int(tgt[i]), "n_tokens": T, "distances": d,
                         "relative": [v / max(1, position % T) for v in d]})
        return recs

    return run_analysis("long_range", model, examples, methods, compute, summarize,
                        params={"k": k, "target": target, "position": position}, result=LongRangeResult,
                        batch_size=batch_size, out=out, overwrite=overwrite, progress=progress,
                        model_name=model_name, info=info)


def summarize(records, specs) -> dict:
    summary = {"methods": {}}
    for spec in specs:
        d = np.array([v for r in records if r["method"] == spec.label for v in r["distances"]], float)
        rl = np.array([v for r in records if r["method"] == spec.label for v in r["relative"]], float)
        summary["methods"][spec.label] = {
            "mean_distance": float(d.mean()) if d.size else float("nan"),
            "median_distance": float(np.median(d)) if d.size else float("nan"),
            "p90_distance": float(np.percentile(d, 90)) if d.size else float("nan"),
            "max_distance": float(d.max()) if d.size else float("nan"),
            "mean_relative": float(rl.mean()) if rl.size else float("nan"),
            "n": sum(r["method"] == spec.label for r in records),
        }
    return summary
