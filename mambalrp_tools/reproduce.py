"""The main job: run the notebook series top to bottom with papermill.

    mambalrp-tools reproduce --quick                  # every notebook, figures into the project's figures/
    mambalrp-tools reproduce --full --only 05 06      # full sizes, two notebooks

Each notebook runs in its own papermill process (own process group) into a run folder
(`runs/reproduce/<time>/`: the executed notebooks, one log per notebook, summary.json), with a per-cell
`execution_timeout`, a kernel start timeout and a wall-clock limit per notebook. A notebook that fails
or hangs is reported with its name and the failing cell's error, and the run goes on with the next.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .viz.paths import project_root, resolve_figures_dir

NOTEBOOKS = ("00_quickstart", "01_conservation", "02_faithfulness", "03_gender_bias", "04_long_range",
             "05_needle_in_haystack", "06_copying")
#: seconds: (per cell, kernel start, per notebook), quick and full. A full run's analysis cell takes
#: about an hour on a 2-core CPU (04's 56 min; 05's Mamba-1 grid ran past an hour while shared)
TIMEOUTS = {True: (300, 60, 900), False: (3 * 3600, 60, 4 * 3600)}


@dataclass
class NotebookRun:
    notebook: str
    status: str  # "ok", "failed" or "hung"
    seconds: float
    figures: list[str] = field(default_factory=list)
    executed: str = ""
    log: str = ""
    error: str = ""


def find_notebooks(directory=None) -> Path:
    """The `notebooks/` folder: given, else the project root's (cwd upward, then the source checkout)."""
    if directory is not None:
        return Path(directory).resolve()
    for root in (project_root(), project_root(Path(__file__).parent)):
        if root is not None and (root / "notebooks").is_dir():
            return root / "notebooks"
    raise FileNotFoundError("no notebooks/ folder found; run from the project checkout or pass --dir")


def _cell_name(cell) -> str:
    """How the user finds the cell: its execution count, else its first line."""
    n = cell.get("execution_count")
    first = ("".join(cell.get("source", "")).strip().splitlines() or [""])[0][:60]
    return f"In [{n}] ({first!r})" if n else f"the cell {first!r}"


def _first_error(executed: Path) -> str:
    """'In [n] (first line): Ename: value' of the first cell whose output is an error, else the name
    of the cell that was running when the notebook stopped (a timed-out cell has no error output)."""
    try:
        cells = [c for c in json.loads(executed.read_text())["cells"] if c.get("cell_type") == "code"]
    except (OSError, ValueError, KeyError):
        return ""
    for cell in cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{_cell_name(cell)}: {out.get('ename')}: {out.get('evalue')}".strip()
    started = [c for c in cells if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    return f"stopped in {_cell_name(started[-1])}" if started else ""


def _last_error_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    errors = [ln for ln in lines if "Error" in ln or "Exception" in ln or "Timeout" in ln]
    return (errors or lines or [""])[-1][:500]


#: what papermill reports when the kernel exits before it answers: nothing ran (in parallel runs, a
#: port another kernel took as this one started), so the notebook starts once more
KERNEL_DIED_AT_START = "Kernel died before replying to kernel_info"


def run_notebook(path: Path, run_dir: Path, parameters: dict, *, cell_timeout: int, start_timeout: int,
                 notebook_timeout: float, kernel: str = "python3") -> NotebookRun:
    """Execute one notebook with papermill in a child process; never raises for a notebook failure.
    A kernel that dies before it answers is started once more (`KERNEL_DIED_AT_START`)."""
    run = _run_once(path, run_dir, parameters, cell_timeout, start_timeout, notebook_timeout, kernel)
    if run.status == "failed" and KERNEL_DIED_AT_START in run.error:
        run = _run_once(path, run_dir, parameters, cell_timeout, start_timeout, notebook_timeout, kernel)
    return run


def _run_once(path, run_dir, parameters, cell_timeout, start_timeout, notebook_timeout, kernel) -> NotebookRun:
    path, run_dir = Path(path).resolve(), Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    executed, log = run_dir / path.name, run_dir / f"{path.stem}.log"
    figures_dir = Path(parameters["FIGURES_DIR"])
    cmd = [sys.executable, "-m", "papermill", str(path), str(executed), "-y", json.dumps(parameters),
           "--cwd", str(path.parent), "-k", kernel, "-l", "python", "--execution-timeout", str(cell_timeout),
           "--start-timeout", str(start_timeout), "--no-progress-bar", "--log-output"]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel uses the inline backend
    start = time.time()
    status, error = "ok", ""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=notebook_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # papermill and its kernel: the group this call started
            proc.wait()
            rc, status = None, "hung"
            error = f"no result after {notebook_timeout:.0f} s: killed"
    seconds = time.time() - start
    if rc not in (0, None):
        status = "failed"
    if status != "ok":
        first, line = _first_error(executed), _last_error_line(log)
        # a timed-out cell shows only the interrupt; papermill's log says it timed out
        error = "; ".join(e for e in (error, first, "" if line in first else line) if e)
    figures = sorted(str(p) for p in figures_dir.glob(f"{path.stem}__*") if p.stat().st_mtime >= start - 1)
    return NotebookRun(path.stem, status, round(seconds, 1), figures, str(executed), str(log), error)


def summary_table(runs: list[NotebookRun]) -> str:
    rows = [("notebook", "status", "seconds", "figures", "executed notebook")]
    rows += [(r.notebook, r.status, f"{r.seconds:.1f}", str(len(r.figures)), r.executed) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def reproduce(quick: bool = True, model: str | None = None, device: str = "cpu", figures="figures", runs=None,
              only=None, directory=None, n: int | None = None, cell_timeout: int | None = None,
              notebook_timeout: float | None = None, progress: bool = True) -> list[NotebookRun]:
    """Run the notebooks (all, or those whose name contains one of `only`); returns one record each."""
    from tqdm.auto import tqdm

    folder = find_notebooks(directory)
    paths = sorted(folder.glob("*.ipynb"))
    if only:
        paths = [p for p in paths if any(key in p.name for key in only)]
    if not paths:
        raise FileNotFoundError(f"no notebooks matched {only or ''} in {folder}")
    root = project_root(folder) or Path.cwd()
    run_dir = Path(runs) if runs else root / "runs" / "reproduce" / time.strftime("%Y%m%d-%H%M%S")
    cell_t, start_t, nb_t = TIMEOUTS[bool(quick)]
    params = {"DEVICE": device, "QUICK": bool(quick), "FIGURES_DIR": str(resolve_figures_dir(figures, folder))}
    if model:
        params["MODEL"] = model
    if n is not None:
        params["N"] = int(n)
    results = []
    bar = tqdm(paths, desc="notebooks", unit="nb", disable=not progress)
    for path in bar:
        bar.set_postfix_str(path.stem)
        r = run_notebook(path, run_dir, params, cell_timeout=cell_timeout or cell_t, start_timeout=start_t,
                         notebook_timeout=notebook_timeout or nb_t)
        results.append(r)
        bar.write(f"{r.notebook}: {r.status} in {r.seconds:.1f} s, {len(r.figures)} figure files"
                  + (f"; {r.error}" if r.error else ""))
    (run_dir / "summary.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    return results


def _run(args) -> int:
    results = reproduce(quick=not args.full, model=args.model, device=args.device, figures=args.figures,
                        runs=args.runs, only=args.only, directory=args.dir, n=args.n,
                        cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout)
    print(summary_table(results))
    print(f"figures: {resolve_figures_dir(args.figures, find_notebooks(args.dir))}; "
          f"run folder: {Path(results[0].executed).parent}")
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        print(f"FAILED {r.notebook} ({r.status}): {r.error} (log: {r.log})", file=sys.stderr)
    return 1 if failed else 0


def add_parser(sub):
    for name in ("reproduce", "notebooks"):  # `notebooks`: the earlier name, kept as an alias
        p = sub.add_parser(name, help="run the notebook series with papermill (figures PDF+PNG, summary table)")
        size = p.add_mutually_exclusive_group()
        size.add_argument("--quick", dest="full", action="store_false", help="small inputs (the default)")
        size.add_argument("--full", action="store_true", help="full sizes, as in the paper's analyses")
        p.add_argument("--model", help="MODEL for every notebook (toy/..., a local directory or a hub id); "
                                       "default: each notebook's own embedded model")
        p.add_argument("--device", default="cpu", help="cpu or cuda")
        p.add_argument("--figures", default="figures", help="figure folder (relative: to the project root)")
        p.add_argument("--runs", help="run folder for executed notebooks (default runs/reproduce/<time>)")
        p.add_argument("--only", nargs="+", metavar="NAME", help="notebooks whose file name contains one of these")
        p.add_argument("--n", type=int, help="N (examples per analysis) for every notebook")
        p.add_argument("--dir", help="the notebooks folder (default: the project's notebooks/)")
        p.add_argument("--cell-timeout", type=int, help="seconds per cell (default 300 quick, 3 h full)")
        p.add_argument("--notebook-timeout", type=float, help="seconds per notebook (default 900 quick, 4 h full)")
        p.set_defaults(run=_run)
