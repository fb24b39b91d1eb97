"""What every explorer shares: the figure area, a status line, an export button, a busy state.

Figures are drawn with `matplotlib.figure.Figure` (not pyplot, so nothing leaks into the cell output)
and put into the `Output` widget by setting its `outputs` directly. Writing into an Output with
`with out: display(...)` while a cell executes makes nbclient (papermill) mimic the Output widget and
send comm messages on the shell socket while it waits on that socket for the cell's reply, the race of
nbclient issue 312 that can leave a run waiting forever on an idle kernel; setting `outputs` avoids it.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path
from typing import Callable

import ipywidgets as W

from ..viz import save_figure
from ..viz.paths import figure_name, resolve_figures_dir


def figure_output(fig, dpi: int = 100) -> dict:
    """A display_data output (PNG) of a matplotlib figure, for `Output.outputs`."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
                     "text/plain": f"<figure {fig.get_size_inches()[0]:.1f}x{fig.get_size_inches()[1]:.1f} in>"}}


def html_output(markup: str) -> dict:
    return {"output_type": "display_data", "metadata": {}, "data": {"text/html": markup, "text/plain": "heatmap"}}


def new_figure(width: float = 8.0, height: float = 3.0):
    """A figure sized for a notebook column (about 8 inches at 100 dpi)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def token_text(tokenizer, ids) -> list[str]:
    """Readable token strings: each id decoded on its own (ids as text when there is no tokenizer)."""
    ids = [int(i) for i in ids]
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.decode([i]).strip() or repr(tokenizer.decode([i])) for i in ids]


def label_of(tokenizer, model, index: int) -> str:
    """A class name (classifier) or the decoded token (LM) for an output index."""
    names = getattr(model.config, "id2label", None) or {}
    if getattr(model.config, "num_labels", 0) and len(names) == model.config.num_labels and \
            model.get_output_embeddings().weight.shape[0] == len(names):
        return str(names.get(index, names.get(str(index), index)))
    return repr(token_text(tokenizer, [index])[0]) if tokenizer is not None else str(index)


class Explorer(W.VBox):
    """An explorer: rows of controls, then the figure area (`mlt-figure`), with export and status.

    `draw(explorer)` (given to the constructor) returns (figures: {name: Figure}, html: str | None); it runs
    on every control change, with the controls disabled and the status saying "computing…".
    """

    def __init__(self, rows: list, draw: Callable, *, primary, stem: str, figures_dir="figures",
                 figure_names: str = "figure"):
        self.draw_fn, self.stem, self.figures, self.quiet = draw, stem, {}, False
        self.figures_dir = resolve_figures_dir(figures_dir)
        self.primary = primary.add_class("mlt-primary")
        self.figure = W.Output().add_class("mlt-figure")
        self.status = W.HTML(layout=W.Layout(min_width="12em")).add_class("mlt-status")
        self.export_button = W.Button(description="export", icon="download",
                                      tooltip=f"save the {figure_names} as PDF and PNG").add_class("mlt-export")
        self.progress = W.FloatProgress(value=0, min=0, max=1, layout=W.Layout(width="12em", visibility="hidden"))
        self.controls = [c for row in rows for c in (row.children if isinstance(row, W.Box) else [row])]
        self.export_button.on_click(self.export)
        super().__init__([*rows, W.HBox([self.export_button, self.progress, self.status]), self.figure])
        self.add_class("mlt-explorer")
        for control in self.controls:
            if hasattr(control, "value"):
                control.observe(self.redraw, names="value")
        self.redraw()

    def step(self, done: float, what: str = ""):
        """Progress of a slow draw (0..1), shown beside the status."""
        self.progress.value = max(0.0, min(1.0, done))
        if what:
            self.status.value = html.escape(f"computing… {what}")

    def redraw(self, *_):
        if self.quiet:  # a draw is updating another control (e.g. new target options): no second draw
            return
        start = time.perf_counter()
        disabled = [c.disabled for c in self.controls]
        for c in self.controls:
            c.disabled = True
        self.export_button.disabled = True
        self.status.value, self.progress.value, self.progress.layout.visibility = "computing…", 0.0, "visible"
        try:
            figures, markup = self.draw_fn(self)
            outputs = [figure_output(f) for f in figures.values()]
            if markup:
                outputs.append(html_output(markup))
            self.figures = figures
            self.figure.outputs = tuple(outputs)
            self.status.value = f"drawn in {time.perf_counter() - start:.1f} s"
        except Exception as err:  # shown to the user; the explorer stays usable
            self.status.value = f"<span style='color:#b00'>error: {html.escape(f'{type(err).__name__}: {err}')}</span>"
        finally:
            for c, d in zip(self.controls, disabled):
                c.disabled = d
            self.export_button.disabled = False
            self.progress.layout.visibility = "hidden"

    def export(self, *_) -> list[Path]:
        """Save every current figure as <stem>__<name>.{pdf,png}; the status shows the absolute paths."""
        try:
            paths = [p for name, fig in self.figures.items()
                     for p in save_figure(fig, figure_name(self.stem, name), self.figures_dir)]
        except Exception as err:
            self.status.value = f"<span style='color:#b00'>export failed: {html.escape(str(err))}</span>"
            return []
        self.status.value = "saved " + ", ".join(html.escape(str(p)) for p in paths)
        return paths
