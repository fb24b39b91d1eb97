"""Figures that read at notebook width: a window of tokens around the evidence, and grid heatmaps."""

from __future__ import annotations

import numpy as np

from .html import window


def _figure(width, height):
    import matplotlib.pyplot as plt  # pyplot, so that a notebook cell shows the figure

    return plt.figure(figsize=(width, height), layout="constrained")


def methods_window(explanations: dict, tokens, evidence=(), width: int = 40, title: str = ""):
    """Methods (rows) x a window of `width` tokens around `evidence` (columns), each row scaled by its
    own max |R| over the whole input; evidence columns are outlined and the title names the window."""
    from matplotlib.patches import Rectangle

    labels = list(explanations)
    rel = np.stack([explanations[m].relevance[0].double().numpy() for m in labels])
    T = rel.shape[1]
    ev = sorted(int(i) for i in evidence)
    a, b = window(T, ev + [T - 1] * (T <= width), width)
    scaled = rel / np.where(np.abs(rel).max(1, keepdims=True) > 0, np.abs(rel).max(1, keepdims=True), 1.0)
    fig = _figure(min(8.0, 0.2 * (b - a) + 1.8), 0.34 * len(labels) + 1.5)
    ax = fig.subplots()
    im = ax.imshow(scaled[:, a:b], cmap="bwr", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(b - a), [tokens[j] for j in range(a, b)], rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for j in ev:
        if a <= j < b:
            ax.add_patch(Rectangle((j - a - 0.5, -0.5), 1, len(labels), fill=False, ec="#e76f51", lw=1.4))
    where = f"tokens {a}–{b - 1} of {T}" if (a, b) != (0, T) else f"all {T} tokens"
    ax.set_title(f"{title} ({where}; evidence outlined)" if title else f"{where}; evidence outlined", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="R / max|R|")
    return fig


def grid_heatmaps(tables: dict, lengths, depths, title: str = ""):
    """One heatmap (context length x depth, values 0..1 annotated) per {panel title: 2-D array}."""
    fig = _figure(3.1 * len(tables) + 0.6, 0.35 * len(lengths) + 2.2)
    axes = fig.subplots(1, len(tables), squeeze=False)[0]
    for ax, (name, grid) in zip(axes, tables.items()):
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
        ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
        ax.set_yticks(range(len(lengths)), [str(L) for L in lengths])
        ax.set(xlabel="needle depth", ylabel="context length")
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=list(axes), fraction=0.03)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
