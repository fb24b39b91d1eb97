"""The command line and the errors a new user meets first (issue 14): one line per error, exit 2,
quiet and fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import mambalrp_tools as mlt
from mambalrp_tools.cli import main

from conftest import child_env

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "the secret code is 4 7 1 9 . what is the secret code ? the secret code is"


def _run(*argv, env=None, timeout=240):
    env = child_env(**(env or {}))
    return subprocess.run([sys.executable, "-m", "mambalrp_tools.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


@pytest.mark.timeout(60)
def test_help_is_fast_and_imports_neither_torch_nor_transformers():
    probe = ("import sys, time; t = time.perf_counter(); import mambalrp_tools.cli as c; c.build_parser(); "
             "print(time.perf_counter() - t, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env=child_env()).stdout.split()
    assert out[1:] == ["False", "False"]
    assert float(out[0]) < 1.0  # the parser itself; typically a few ms
    t = time.perf_counter()
    proc = _run("--help")
    wall = time.perf_counter() - t
    assert proc.returncode == 0 and "explain" in proc.stdout and "evaluate" in proc.stdout
    assert wall < 5.0, wall  # generous for a shared machine: the interpreter's start-up dominates


@pytest.mark.timeout(120)
def test_explain_says_what_it_explains(capsys):
    assert main(["explain", "--model", "toy/needle", PROMPT + " 4"]) == 0
    out, err = capsys.readouterr()
    assert "explains logit['7']" in out and "the model predicts '7'" in out and "probability" in out
    assert "top: '7'" in out and "sum R = " in out and "conservation error" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["5"]]
    assert rows and rows[0][1] == "7" and float(rows[0][2]) > 0  # the per-token table: token 5 is the '7'
    # no transformers progress bar or kernel warning unless --verbose
    assert "Loading weights" not in err and "falling back" not in err, err
    assert main(["--verbose", "explain", "--model", "toy/needle", PROMPT]) == 0
    assert "Loading weights" in capsys.readouterr().err  # the check above can fail


@pytest.mark.timeout(120)
def test_explain_json(capsys):
    assert main(["explain", "--json", "--method", "gi", "--target", "9", PROMPT]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == "9" and report["predicted"] == "4" and report["method"] == "gradient_x_input"
    assert len(report["top"]) == 5 and report["top"][0]["token"] == "4"
    assert len(report["relevance"]) == len(PROMPT.split())
    assert report["sum_relevance"] == pytest.approx(sum(r["relevance"] for r in report["relevance"]), rel=1e-5)
    assert 0.0 <= report["probability"] <= 1.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv,needle", [
    (["explain", "--method", "ig:nsteps=10", PROMPT], "did you mean 'n_steps'"),
    (["explain", "--model", "./no_such_dir", PROMPT], "no such directory: './no_such_dir'"),
    (["explain", "--target", "banana", PROMPT], "'banana' is not in the tokenizer's vocabulary"),
    (["explain", "--model", "nobody-here/no-such-mamba-xyz", PROMPT], "HF_HUB_OFFLINE=1"),
    (["evaluate", "faithfulness", "--model", "toy/sentiment", "--methods", "mambalrp:-foo", "--out", "unused"],
     "unknown MambaLRP rule"),
])
def test_user_errors_are_one_line_with_exit_2(argv, needle, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    with pytest.raises((ValueError, OSError)) as info:  # --debug: the exception itself, with its traceback
        main(["--debug", *argv])
    assert lines[0] == "error: " + " ".join(str(info.value).split())


@pytest.mark.timeout(120)
def test_debug_prints_the_traceback():
    proc = _run("--debug", "explain", "--model", "./no_such_dir", PROMPT)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


@pytest.mark.timeout(60)
def test_unknown_hub_id_fails_fast_without_network(monkeypatch):
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    t = time.perf_counter()
    with pytest.raises(OSError) as info:
        mlt.load_model("nobody-here/no-such-mamba-xyz")
    assert time.perf_counter() - t < 2.0
    message = str(info.value)
    assert "unreachable" in message and "HF_HUB_OFFLINE=1" in message and "toy/needle" in message
    assert "\n" not in message and info.value.__cause__ is None


@pytest.mark.timeout(120)
def test_unknown_target_and_unknown_input_words():
    model, tok = mlt.load_model("toy/needle")
    with pytest.raises(ValueError, match=r"'sekret' is not in .* nearest entries: \['secret'"):
        mlt.explain(model, PROMPT, tokenizer=tok, target="sekret")
    with pytest.warns(UserWarning, match=r"not in the tokenizer's vocabulary.*'banana', 'kode'") as record:
        mlt.explain(model, "the secret code is 4 banana 1 9 . what is the kode ?", tokenizer=tok)
    assert len([w for w in record if "vocabulary" in str(w.message)]) == 1  # once, naming all of them
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known words: no warning
        mlt.explain(model, PROMPT, tokenizer=tok)


@pytest.mark.timeout(120)
def test_each_analysis_offers_exactly_its_own_options_with_the_library_defaults():
    import inspect

    from mambalrp_tools.cli import build_parser
    from mambalrp_tools.evaluation import cli as ecli

    parser = build_parser("evaluate")
    evaluate = parser._subparsers._group_actions[0].choices["evaluate"]
    analyses = evaluate._subparsers._group_actions[0].choices
    assert set(analyses) == set(ecli.ANALYSES)
    for name, sub in analyses.items():
        params = inspect.signature(ecli.analysis_function(name)).parameters
        offered = {a.dest[len("opt_"):]: a.default for a in sub._actions if a.dest.startswith("opt_")}
        expected = {p.name: p.default for p in params.values() if p.default is not p.empty
                    and (p.name not in ecli.SUPPLIED or (name, p.name) in ecli.RENAMED)
                    and (name, p.name) not in ecli.UNUSED}
        assert offered == expected, name
    n_default = next(a.default for a in analyses["needle"]._actions if a.dest == "n")
    assert n_default == inspect.signature(ecli.analysis_function("needle")).parameters["n"].default
    # a flag another analysis has is refused, not ignored
    with pytest.raises(SystemExit):
        build_parser("evaluate").parse_args(["evaluate", "conservation", "--model", "m", "--out", "o",
                                             "--replacement", "zero"])


@pytest.mark.timeout(300)
def test_evaluate_prints_a_table_and_the_run_folder_and_leaves_no_lock(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["evaluate", "conservation", "--model", "toy/sentiment", "--n", "3", "--out", str(out), "--quiet",
            "--no-figures"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if "mean ± s.e." in line)
    assert header.split()[:2] == ["method", "metric"] and header.split()[-1] == "n"
    assert "median_rel_error" in printed and f"run folder: {out}" in printed
    assert not (out / ".lock").exists()
    # an error mid-run (a folder of another evaluation is refused) leaves no lock either
    assert main(argv[:-4] + ["--n", "4", "--out", str(out), "--quiet", "--no-figures"]) == 2
    assert "belongs to a different evaluation" in capsys.readouterr().err
    assert not (out / ".lock").exists()


@pytest.mark.timeout(120)
def test_an_incomplete_data_parallel_run_is_one_line_with_exit_1(tmp_path, capsys, monkeypatch):
    """What the ranks that did not fail print when another rank failed (the failed one raises its own)."""
    from mambalrp_tools.evaluation.runs import RunIncomplete

    message = ("the run in r is incomplete: rank 1 failed on sample 3, method 'gi' (ZeroDivisionError: x). "
               "7 of 20 (sample, method) records are missing; run the same command again to complete them")

    def incomplete(*args, **kwargs):
        raise RunIncomplete(message)

    import mambalrp_tools.evaluation  # noqa: F401 - the module below (its name is also the function's)
    monkeypatch.setattr(sys.modules["mambalrp_tools.evaluation.conservation"], "run_analysis", incomplete)
    argv = ["evaluate", "conservation", "--model", "toy/sentiment", "--n", "2", "--out", str(tmp_path / "r"), "--quiet"]
    assert main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["error: " + message]
    with pytest.raises(RunIncomplete):  # --debug: the exception itself
        main(["--debug", *argv])


@pytest.mark.timeout(120)
def test_explain_a_classifier_names_its_classes(capsys):
    assert main(["explain", "--json", "--model", "toy/sentiment", "--target", "negative", "the movie was great"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == "negative" and {t["token"] for t in report["top"]} == {"negative", "positive"}
    assert sum(t["probability"] for t in report["top"]) == pytest.approx(1.0)
    assert main(["explain", "--model", "toy/sentiment", "--target", "bad", "the movie"]) == 2
    assert "not a class of this classifier" in capsys.readouterr().err
