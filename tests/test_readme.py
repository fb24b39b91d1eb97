"""Every example block of the README runs, and the predictions it states hold.

Python blocks run in order in one namespace (as in one notebook); a line `expression  # -> value`
states a result, checked with ==. Command lines: `mambalrp-tools explain ...  # explains 'X'` is run
and must explain X; `evaluate` lines run on 2 examples into a temporary folder; lines that need a
GPU, the network or minutes (install, train-toy, notebooks, launchers) are parsed, not run, for the
reason given in their test id.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
COMMANDS = [line.strip() for lang, code in BLOCKS if lang == "bash" for line in code.splitlines()
            if line.strip() and not line.strip().startswith("#")]
STATED = re.compile(r"#\s*->\s*(.+?)\s*$")


def _kind(line: str) -> str:
    if line.startswith(("torchrun ", "accelerate launch ")):
        return "launcher (GPUs or minutes; tests/test_evaluation.py runs 2 gloo processes): CLI part parsed"
    if not line.startswith("mambalrp-tools "):
        return "install (needs the network and a new venv): bash -n only"
    cmd = shlex.split(line, comments=True)[1]
    if cmd in ("train-toy", "finetune"):
        return "training takes minutes on a GPU: parsed only"
    if cmd == "notebooks":
        return "tests/test_notebooks.py runs the notebooks: parsed only"
    return "run"


def test_readme_has_examples():
    assert len(PYTHON) >= 2 and any(c.startswith("mambalrp-tools explain") for c in COMMANDS)


@pytest.mark.timeout(300)
def test_python_blocks_run_and_state_true_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples save files
    torch.set_num_threads(1)
    namespace: dict = {}
    checked = 0
    for b, code in enumerate(PYTHON):
        lines = code.splitlines()
        for node in ast.parse(code).body:
            source = ast.get_source_segment(code, node)
            stated = STATED.search(lines[node.end_lineno - 1])
            if stated and isinstance(node, ast.Expr):
                value = eval(compile(ast.Expression(node.value), f"README python block {b}", "eval"), namespace)
                assert value == ast.literal_eval(stated.group(1)), f"README states {source} -> {stated.group(1)}"
                checked += 1
            else:
                exec(compile(ast.Module([node], []), f"README python block {b}", "exec"), namespace)
    assert checked >= 2


@pytest.mark.timeout(300)
@pytest.mark.parametrize("line", COMMANDS, ids=[f"{i}: {_kind(c)}" for i, c in enumerate(COMMANDS)])
def test_command_lines(line, tmp_path, capsys):
    from mambalrp_tools.cli import build_parser, main

    kind = _kind(line)
    if kind.startswith("install"):
        assert subprocess.run(["bash", "-n", "-c", line]).returncode == 0
        return
    if kind.startswith("launcher"):
        words = shlex.split(line, comments=True)
        argv = words[words.index("mambalrp_tools.cli") + 1:]
        assert argv[0] == "--"  # else the launcher reads the evaluation's options (--n) as its own
        build_parser(argv[1]).parse_args(argv[1:])
        return
    argv = shlex.split(line, comments=True)[1:]
    if kind != "run":
        build_parser(argv[0]).parse_args(argv)  # SystemExit on an unknown command or flag
        return
    if "--help" in argv:
        assert main(argv) == 0 and "usage:" in capsys.readouterr().out
        return
    if argv[0] == "explain":
        stated = re.search(r"#\s*explains\s+('[^']*')", line)
        assert main([*argv, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        if stated:
            assert report["target"] == ast.literal_eval(stated.group(1)) == report["predicted"]
        return
    assert argv[0] == "evaluate"
    assert main([*argv, "--n", "2", "--out", str(tmp_path / "run"), "--quiet", "--no-figures"]) == 0
    assert "run folder:" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_other_phrasings_give_digits_not_in_the_prompt():
    """The README says toy/needle answers its training phrasing only; the issue's phrasing shows why."""
    import mambalrp_tools as mlt
    from mambalrp_tools.evaluation import logits_at

    model, tok = mlt.load_model("toy/needle")
    ids = tok("the secret code is 4 7 1 9 . the code is", add_special_tokens=False)["input_ids"]
    predicted = tok.convert_ids_to_tokens([int(logits_at(model, ids).argmax())])[0]
    assert predicted.isdigit() and predicted not in "4719"
