"""Side-by-side views of several explanations of the same input, and figure export."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..explanation import Explanation


def _as_items(explanations) -> list[tuple[str, Explanation]]:
    """A {label: Explanation} mapping or a sequence of Explanations -> [(label, Explanation)]."""
    if isinstance(explanations, Explanation):
        explanations = [explanations]
    if isinstance(explanations, Mapping):
        items = [(str(k), v) for k, v in explanations.items()]
    elif isinstance(explanations, Sequence):
        items, seen = [], {}
        for e in explanations:
            label = getattr(e, "method", "?")
            seen[label] = seen.get(label, 0) + 1
            items.append((label if seen[label] == 1 else f"{label} ({seen[label]})", e))
    else:
        raise TypeError("explanations must be a {label: Explanation} dict or a list of Explanations")
    if not items:
        raise ValueError("no explanations to show")
    for label, e in items:
        if not isinstance(e, Explanation):
            raise TypeError(f"{label!r} is a {type(e).__name__}, not an Explanation")
    return items


def _table(explanations, sample: int, max_tokens: int | None):
    """(labels, tokens, R [n_methods, n_tokens] scaled per method to max |R| = 1, raw R) of one sample."""
    items = _as_items(explanations)
    first = items[0][1]
    if not -len(first) <= sample < len(first):
        raise ValueError(f"sample {sample} is out of range for a batch of {len(first)}")
    ids = first.input_ids[sample]
    for label, e in items[1:]:
        if len(e) != len(first) or not np.array_equal(e.input_ids[sample].numpy(), ids.numpy()):
            raise ValueError(f"{label!r} explains a different input than {items[0][0]!r}; compare explanations "
                             "of the same input_ids")
    real = first._real(sample % len(first))
    if max_tokens is not None:
        real = real[-max_tokens:]  # the tokens nearest the explained (last) position
    source = next((e for _, e in items if e.tokens is not None), first)
    tokens = [source._tokens(sample % len(first))[j] for j in real]
    raw = np.stack([e.relevance[sample, real].double().numpy() for _, e in items])
    scale = np.abs(raw).max(axis=1, keepdims=True)
    scaled = raw / np.where(scale > 0, scale, 1.0)
    return [label for label, _ in items], tokens, scaled, raw


def plot_methods(explanations, sample: int = 0, *, max_tokens: int | None = 80, tokens_on: str = "x",
                 cmap: str = "bwr", ax=None, title: str | None = None, colorbar: bool = True,
                 cell: float = 0.32):
    """Tokens x methods heatmap of one sample (the layout of the MambaLRP paper's Fig. 4).

    explanations: {label: Explanation} or a list of Explanations (labelled by method), all of the same
        input. Each method is divided by its own max |R| (so every row spans [-1, 1]) and drawn with a
        diverging colormap centred at 0 (red positive, blue negative, white 0). Padding is dropped;
        `max_tokens` keeps the last tokens. tokens_on="x" puts tokens on the x axis (methods as rows),
        "y" transposes (better for long inputs). Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if tokens_on not in ("x", "y"):
        raise ValueError(f"tokens_on must be 'x' or 'y', got {tokens_on!r}")
    labels, tokens, scaled, _ = _table(explanations, sample, max_tokens)
    data = scaled if tokens_on == "x" else scaled.T
    if ax is None:
        h, w = data.shape
        fig, ax = plt.subplots(figsize=(max(3.0, cell * w + 2.2), max(1.4, cell * h + 1.2)), layout="constrained")
    else:
        fig = ax.figure
    im = ax.imshow(data, cmap=cmap, vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest")
    tok_axis, meth_axis = (ax.set_xticks, ax.set_yticks) if tokens_on == "x" else (ax.set_yticks, ax.set_xticks)
    tok_axis(range(len(tokens)), tokens, fontsize=8, **({"rotation": 90} if tokens_on == "x" else {}))
    meth_axis(range(len(labels)), labels, fontsize=9, **({} if tokens_on == "x" else {"rotation": 45, "ha": "right"}))
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(-0.5, data.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, data.shape[0]), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    if title:
        ax.set_title(title)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="R / max|R|")
    return fig


class HTMLView(str):
    """An HTML string that notebooks render (a plain `str` everywhere else)."""

    def _repr_html_(self) -> str:
        return str(self)


def _background(v: float) -> str:
    rgb = "220,40,40" if v >= 0 else "40,90,220"  # same colours as Explanation.to_html
    return f"rgba({rgb},{min(abs(v), 1.0):.3f})"


def methods_html(explanations, sample: int = 0, *, max_tokens: int | None = None) -> HTMLView:
    """Side-by-side HTML table of one sample: one row per method, one aligned column per token.

    Each method is scaled by its own max |R| (red positive, blue negative); hovering a cell shows the
    raw relevance. Displays itself in Jupyter; `str(...)` gives the HTML.
    """
    labels, tokens, scaled, raw = _table(explanations, sample, max_tokens)
    cell = "padding:2px 4px;text-align:center;border:1px solid #fff;white-space:nowrap"
    head = "".join(f"<th style='{cell};font-weight:normal;color:#555'>{j}</th>" for j in range(len(tokens)))
    rows = [f"<tr><th></th>{head}</tr>"]
    for label, s_row, r_row in zip(labels, scaled, raw):
        cells = "".join(
            f"<td title='{r:.4g}' style='{cell};background:{_background(s)}'>{html.escape(tok)}</td>"
            for tok, s, r in zip(tokens, s_row, r_row)
        )
        rows.append(f"<tr><th style='text-align:right;padding-right:8px'>{html.escape(label)}</th>{cells}</tr>")
    return HTMLView(
        "<div style='overflow-x:auto;font-family:monospace;font-size:12px'>"
        f"<table style='border-collapse:collapse'>{''.join(rows)}</table></div>"
    )


def save_figure(fig, name: str, directory: str | Path = "figures", formats: Sequence[str] = ("pdf", "png"),
                dpi: int = 200) -> list[Path]:
    """Write `fig` as directory/name.pdf and directory/name.png (created if needed); returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = Path(name).stem if Path(name).suffix.lstrip(".") in formats else Path(name).name
    paths = []
    for fmt in formats:
        path = directory / f"{stem}.{fmt}"
        # no creation date in PDFs: re-running a notebook leaves an unchanged figure byte-identical
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    return paths
