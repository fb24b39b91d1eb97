"""The notebook series: committed clean, each runs in quick mode (papermill, as `reproduce` runs it) and
exports PDF+PNG figures named <stem>__<figure>; the hub path with tiny random models saved to a local
directory; a failing or hung notebook is reported by name; widget cells give nbclient nothing to hang on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
import torch

from mambalrp_tools.reproduce import NOTEBOOKS, run_notebook, summary_table

pytestmark = pytest.mark.timeout(60)  # the static checks; each run below sets its own
ROOT = Path(__file__).resolve().parents[1]
PATHS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PARAMS = ("MODEL", "DEVICE", "QUICK", "N", "FIGURES_DIR")


def test_the_series_is_complete():
    assert [p.stem for p in PATHS] == list(NOTEBOOKS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_short_cells(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "committed with outputs"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one papermill `parameters` cell"
    assert [line.split("=")[0].strip() for line in "".join(tagged[0]["source"]).splitlines()] == list(PARAMS)
    assert max(len("".join(c["source"]).splitlines()) for c in code) <= 15


def _run(path, tmp_path, **params):
    figures = tmp_path / "figures"
    r = run_notebook(path, tmp_path / "run", {"QUICK": True, "DEVICE": "cpu", "FIGURES_DIR": str(figures), **params},
                     cell_timeout=240, start_timeout=60, notebook_timeout=280)
    assert r.status == "ok", f"{r.notebook}: {r.error}"
    names = [Path(p).name for p in r.figures]
    assert all(n.startswith(f"{path.stem}__") for n in names), names
    assert {Path(n).suffix for n in names} == {".pdf", ".png"}, f"{path.name} exported no PDF+PNG figure"
    assert not list((ROOT / "figures").glob(f"{path.stem}__*")) or all(
        Path(p).parent == figures for p in r.figures), "tests write figures to a temporary folder only"
    return r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, tmp_path):
    r = _run(path, tmp_path)
    executed = json.loads(Path(r.executed).read_text())
    assert not [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.fixture(scope="module")
def hub_dirs(tmp_path_factory):
    """A tiny random LM and a tiny random classifier saved with save_pretrained, with toy tokenizers."""
    from transformers import MambaConfig, MambaForCausalLM

    from mambalrp_tools import make_classifier
    from mambalrp_tools.zoo.tokenizers import toy_tokenizer

    base = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)  # the same random models every run
    out = {}
    for kind, task in (("lm", "needle"), ("classifier", "bios")):
        tok = toy_tokenizer(task)
        cfg = dict(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, intermediate_size=32, state_size=4,
                   use_conv_bias=False, use_bias=False, pad_token_id=tok.pad_token_id or 0)
        if kind == "lm":
            model = MambaForCausalLM(MambaConfig(**cfg))
        else:
            model = make_classifier(MambaConfig(**cfg, num_labels=5))
        model.save_pretrained(base / kind)
        tok.save_pretrained(base / kind)
        out[kind] = base / kind
    return out


HUB = {"00_quickstart": "lm", "01_conservation": "lm", "02_faithfulness": "classifier", "03_gender_bias": "classifier",
       "04_long_range": "lm", "05_needle_in_haystack": "lm"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stem", sorted(HUB))
def test_notebook_runs_on_a_local_model_directory(stem, hub_dirs, tmp_path):
    path = ROOT / "notebooks" / f"{stem}.ipynb"
    r = _run(path, tmp_path, MODEL=str(hub_dirs[HUB[stem]]), N=2)
    executed = Path(r.executed).read_text()
    assert str(hub_dirs[HUB[stem]]) in executed, "the notebook ran on the given directory"


def _notebook(path, *sources):
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    book.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(book, path)
    return path


@pytest.mark.timeout(120)
def test_a_failing_or_hung_notebook_is_named_and_the_run_goes_on(tmp_path):
    params = {"FIGURES_DIR": str(tmp_path)}
    bad = _notebook(tmp_path / "bad.ipynb", "FIGURES_DIR = ''", "raise ValueError('broken on purpose')")
    slow = _notebook(tmp_path / "slow.ipynb", "FIGURES_DIR = ''", "import time\ntime.sleep(300)")
    runs = [run_notebook(bad, tmp_path / "run", params, cell_timeout=60, start_timeout=60, notebook_timeout=100),
            run_notebook(slow, tmp_path / "run", params, cell_timeout=3, start_timeout=60, notebook_timeout=100),
            run_notebook(slow, tmp_path / "run", params, cell_timeout=300, start_timeout=60, notebook_timeout=15)]
    assert [r.status for r in runs] == ["failed", "failed", "hung"]
    assert "In [3] (\"raise ValueError('broken on purpose')\"): ValueError: broken on purpose" in runs[0].error
    assert "'time.sleep(300)'" not in runs[1].error and "'import time'" in runs[1].error, runs[1].error
    assert "timed out" in runs[1].error.lower(), runs[1].error
    assert "killed" in runs[2].error
    table = summary_table(runs)
    assert table.count("failed") == 2 and "hung" in table and "bad" in table


@pytest.mark.timeout(120)
def test_a_kernel_that_dies_at_start_is_started_once_more(tmp_path, monkeypatch):
    """A kernel that exits before it answers (as one whose port another kernel took can) has run
    nothing: the notebook starts again, once. A kernel that always dies fails the notebook."""
    import json
    import sys

    def kernelspec(name, launcher):
        spec = tmp_path / "kernels" / name
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-c", launcher, "-f", "{connection_file}"], "display_name": name,
            "language": "python"}))

    marker = tmp_path / "died-once"
    kernelspec("dies-once", f"import pathlib, sys\nm = pathlib.Path({str(marker)!r})\n"
                            "if not m.exists():\n    m.touch(); sys.exit(1)\n"
                            "from ipykernel import kernelapp; kernelapp.launch_new_instance()")
    kernelspec("always-dies", "import sys; sys.exit(1)")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    book = _notebook(tmp_path / "one.ipynb", "FIGURES_DIR = ''", "x = 1 + 1")
    kw = dict(cell_timeout=60, start_timeout=30, notebook_timeout=100)
    params = {"FIGURES_DIR": str(tmp_path)}
    again = run_notebook(book, tmp_path / "run", params, kernel="dies-once", **kw)
    assert marker.exists() and again.status == "ok", again.error
    dead = run_notebook(book, tmp_path / "run", params, kernel="always-dies", **kw)
    assert dead.status == "failed" and "Kernel died before replying to kernel_info" in dead.error, dead.error


@pytest.mark.timeout(120)
def test_widget_cells_do_not_use_nbclients_output_widget_mimic(tmp_path, monkeypatch):
    """nbclient issue 312: while a cell runs, writing into an Output widget (`with out: ...`) makes nbclient
    send comm messages on the shell socket it is waiting on, which can lose the cell's reply. Our
    explorers set `Output.outputs` instead, so nbclient registers no output hook for them."""
    from nbclient import NotebookClient

    class Counting(NotebookClient):
        hooks = 0

        def register_output_hook(self, msg_id, hook):
            Counting.hooks += 1
            super().register_output_hook(msg_id, hook)

    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))  # for the kernel
    control = _notebook(tmp_path / "control.ipynb", "import ipywidgets as W\nout = W.Output()\nwith out:\n    print(1)\nout")
    ours = _notebook(tmp_path / "ours.ipynb",
                     "import mambalrp_tools as mlt\nfrom mambalrp_tools import widgets\n"
                     "m, t = mlt.load_model('toy/needle')\n"
                     f"widgets.needle_explorer(m, t, context_length=64, max_context_length=128, figures_dir={str(tmp_path)!r})")
    for path, expected in ((control, 1), (ours, 0)):
        Counting.hooks = 0
        Counting(nbformat.read(path, 4), timeout=100, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
        assert Counting.hooks == expected, path.name
