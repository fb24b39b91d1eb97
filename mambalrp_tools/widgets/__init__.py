"""Interactive explorers for JupyterLab (ipywidgets), one module per widget.

Every explorer is an `Explorer` (a VBox with CSS class `mlt-explorer`): controls, an export button
(`mlt-export`), a status line (`mlt-status`) and the figure area (`mlt-figure`).
"""

from __future__ import annotations

from .base import Explorer
from .bias import bias_explorer
from .conservation import conservation_explorer
from .copying import copying_explorer
from .explore import explore
from .export import FigureExport, export_figures
from .faithfulness import faithfulness_explorer
from .long_range import long_range_explorer
from .needle import needle_explorer
from .needle_compare import needle_comparison

__all__ = ["Explorer", "FigureExport", "bias_explorer", "conservation_explorer", "copying_explorer", "explore",
           "export_figures", "faithfulness_explorer", "long_range_explorer", "needle_comparison",
           "needle_explorer"]
