"""Every notebook runs top to bottom in quick mode (papermill) and exports its figures as PDF and PNG."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mambalrp_tools.notebooks import run_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ is empty"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, tmp_path):
    cells = json.loads(path.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "each notebook has exactly one papermill `parameters` cell"
    assert all(name in "".join(tagged[0]["source"]) for name in ("model_id", "device", "quick"))
    assert max(len("".join(c["source"]).splitlines()) for c in cells if c["cell_type"] == "code") <= 30

    start = time.time()
    run_notebooks(ROOT / "notebooks", tmp_path, quick=True, only=[path.name])
    executed = json.loads((tmp_path / path.name).read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    fresh = [p for p in (ROOT / "figures").glob(f"{path.stem}*") if p.stat().st_mtime >= start - 1]
    assert {p.suffix for p in fresh} >= {".pdf", ".png"}, f"{path.name} exported no PDF+PNG figure"
