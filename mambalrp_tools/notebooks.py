"""Run the notebook series top to bottom with papermill (the project's main job).

    mambalrp-tools notebooks --quick          # every notebooks/*.ipynb, figures into figures/

Executed copies go to `runs/notebooks/` so the curated notebooks stay clean; each notebook writes
its figures (PDF and PNG) to `figures/` itself.
"""

from __future__ import annotations

from pathlib import Path


def run_notebooks(directory="notebooks", out="runs/notebooks", quick=True, device="cpu", only=None):
    import papermill as pm

    paths = sorted(Path(directory).glob("*.ipynb"))
    if only:
        paths = [p for p in paths if any(key in p.name for key in only)]
    if not paths:
        raise FileNotFoundError(f"no notebooks matched in {Path(directory).resolve()}")
    Path(out).mkdir(parents=True, exist_ok=True)
    for path in paths:
        print(f"running {path} (quick={quick}, device={device})", flush=True)
        pm.execute_notebook(str(path), str(Path(out) / path.name), parameters={"quick": quick, "device": device},
                            cwd=str(path.parent.parent), progress_bar=False, kernel_name="python3")
    return paths


def add_parser(sub):
    p = sub.add_parser("notebooks", help="run the notebook series with papermill (writes figures/)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="full", action="store_false", help="small inputs (the default)")
    size.add_argument("--full", action="store_true", help="full sizes, as in the paper's analyses")
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="*", help="run only notebooks whose file name contains one of these")
    p.add_argument("--dir", default="notebooks")
    p.add_argument("--out", default="runs/notebooks")
    p.set_defaults(run=lambda a: run_notebooks(a.dir, a.out, not a.full, a.device, a.only) and 0)
