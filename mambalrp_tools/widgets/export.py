"""An export button for the static figures of a notebook (the explorers have their own)."""

from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as W

from ..viz import save_figure
from ..viz.paths import figure_name, resolve_figures_dir


class FigureExport(W.HBox):
    """Button (`mlt-export`) + status (`mlt-status`): saves `figures` ({name: Figure}) as
    <stem>__<name>.{pdf,png} into figures_dir. `save_now=True` saves once when built (papermill runs)."""

    def __init__(self, figures: dict, stem: str, figures_dir="figures", save_now: bool = True):
        self.figures, self.stem = figures, stem
        self.figures_dir = resolve_figures_dir(figures_dir)
        self.button = W.Button(description=f"export {len(figures)} figure{'s' * (len(figures) != 1)}",
                               icon="download").add_class("mlt-export")
        self.status = W.HTML().add_class("mlt-status")
        self.button.on_click(self.export)
        super().__init__([self.button, self.status])
        self.paths: list[Path] = self.export() if save_now else []

    def export(self, *_) -> list[Path]:
        self.paths = [p for name, fig in self.figures.items()
                      for p in save_figure(fig, figure_name(self.stem, name), self.figures_dir)]
        self.status.value = "saved " + ", ".join(html.escape(str(p)) for p in self.paths)
        return self.paths


def export_figures(figures: dict, stem: str, figures_dir="figures", save_now: bool = True) -> FigureExport:
    return FigureExport(figures, stem, figures_dir, save_now)
