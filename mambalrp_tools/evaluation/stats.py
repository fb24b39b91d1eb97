"""Small statistics the summaries share."""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def mean_se(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, standard error, n) over the finite values; nan where undefined."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = sum(vals) / n
    if n == 1:
        return mean, float("nan"), 1
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var / n), n


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """ROC-AUC = P(score of a random positive > that of a random negative), ties count 1/2."""
    from scipy.stats import rankdata

    pos = [bool(p) for p in positive]
    n_pos = sum(pos)
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata([float(s) for s in scores])  # average ranks handle ties
    rank_sum = sum(r for r, p in zip(ranks, pos) if p)
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
