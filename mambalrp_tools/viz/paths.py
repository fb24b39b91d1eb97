"""Where notebooks write figures: FIGURES_DIR made absolute against the project root."""

from __future__ import annotations

from pathlib import Path


def project_root(start: str | Path | None = None) -> Path | None:
    """The nearest folder at or above `start` (default: the cwd) holding this project's pyproject.toml."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        py = folder / "pyproject.toml"
        if py.is_file() and "mambalrp_tools" in py.read_text(errors="ignore"):
            return folder
    return None


def resolve_figures_dir(path: str | Path = "figures", start: str | Path | None = None) -> Path:
    """An absolute folder for figures. A relative `path` is taken against the project root (so that a
    kernel started in `notebooks/` still writes to the project's `figures/`), else against the cwd."""
    path = Path(path).expanduser()
    if not path.is_absolute():
        path = (project_root(start) or Path.cwd()) / path
    return path.resolve()


def figure_name(stem: str, figure: str) -> str:
    """`<notebook stem>__<figure>`, the name every exported figure gets."""
    return f"{stem}__{figure}"
