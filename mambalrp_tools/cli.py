"""Explain what a Mamba model predicts, and run the MambaLRP paper's evaluations, from the shell.

  mambalrp-tools explain --model toy/needle "the secret code is 4 7 1 9 . what is the secret code ? the secret code is"
  mambalrp-tools evaluate faithfulness --model toy/sentiment --n 100 --out runs/faith
  mambalrp-tools evaluate faithfulness --help       (each analysis lists its own options)

Embedded models (toy/needle, toy/copying, toy/bios, toy/sentiment) work offline; any Hugging Face
Mamba id or local directory works too. Errors print one line; --debug shows the traceback,
--verbose shows transformers' progress bars and warnings.
"""

from __future__ import annotations

import argparse
import sys

#: command -> (module that registers it, one-line help). A module is imported only when its
#: command runs or shows its help, so `mambalrp-tools --help` loads neither torch nor transformers.
#: The module has `register(subparsers)` or `add_parser(subparsers)`, adding the command's parser.
COMMANDS = {
    "explain": ("mambalrp_tools.cli", "explain one prediction: the explained token, its logit and probability, "
                                      "the top 5 and the relevance of every input token"),
    "evaluate": ("mambalrp_tools.evaluation.cli", "run one of the paper's analyses into a resumable run folder"),
    "train-toy": ("mambalrp_tools.zoo.train", "retrain an embedded toy model from its recipe"),
    "finetune": ("mambalrp_tools.zoo.train", "fine-tune a hub Mamba as a classifier on a hub dataset"),
    "reproduce": ("mambalrp_tools.reproduce", "run the notebook series with papermill (figures PDF+PNG, summary table)"),
    "notebooks": ("mambalrp_tools.reproduce", "the earlier name of reproduce"),
}
GLOBAL_FLAGS = ("--debug", "--verbose")
#: exceptions that mean "bad input", reported as one line and exit status 2
USER_ERRORS = (ValueError, TypeError, OSError, KeyError, LookupError)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported and registers its full options."""
    parser = argparse.ArgumentParser(prog="mambalrp-tools", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--verbose", action="store_true", help="show transformers' progress bars and warnings")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in COMMANDS:
        import importlib

        module = importlib.import_module(COMMANDS[command][0])
        (module.register if hasattr(module, "register") else module.add_parser)(sub)
    for name, (_, text) in COMMANDS.items():
        if name in sub.choices:
            sub.choices[name].description = sub.choices[name].description or text
            continue
        sub.add_parser(name, help=text, description=text)
    sub._choices_actions.sort(key=lambda a: list(COMMANDS).index(a.dest) if a.dest in COMMANDS else len(COMMANDS))
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {f: f in argv for f in GLOBAL_FLAGS}  # accepted anywhere on the line
    argv = [a for a in argv if a not in GLOBAL_FLAGS]
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as stop:  # argparse: --help (0) or a usage error (2, already printed)
        return int(stop.code or 0)
    args.debug, args.verbose = flags["--debug"], flags["--verbose"]
    if not args.verbose:
        quiet_transformers()
    if not hasattr(args, "run"):
        print(f"error: {command} is not available in this installation", file=sys.stderr)
        return 2
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, KeyError):
        text = f"{type(err).__name__} {text}"
    return text


def quiet_transformers():
    """No progress bars and only errors from transformers / huggingface_hub (shown with --verbose)."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules:  # already imported: tell it directly
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()


# ------------------------------------------------------------------------------------------ explain


def add_parser(sub):
    p = sub.add_parser("explain", help=COMMANDS["explain"][1], description=COMMANDS["explain"][1])
    p.add_argument("text", help="the input text (the model explains its output after the last token)")
    p.add_argument("--model", default="toy/needle", help="toy/NAME, a local directory or a hub id (default: toy/needle)")
    p.add_argument("--method", default="mambalrp",
                   help="a method of mlt.list_methods(), with options as in evaluate: mambalrp:-ssm, ig:n_steps=20 "
                        "(default: mambalrp)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--target", default=None, help="the token (a classifier: the class label) to explain (default: the prediction)")
    which.add_argument("--target-id", type=int, default=None, help="the token (or class) to explain, by id")
    p.add_argument("--contrast", default=None, help="explain logit[target] - logit[contrast] (a token as text)")
    p.add_argument("--device", default=None)
    p.add_argument("--top", type=int, default=5, help="alternatives to list (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(run=run_explain)
    return p


def explain_report(model, tokenizer, text, method="mambalrp", target=None, contrast=None, top=5) -> dict:
    """Everything `explain` prints, as a JSON-able dict."""
    import torch

    from .api import explain
    from .evaluation.forward import logits_at
    from .evaluation.specs import parse_method

    spec = parse_method(method)
    n_out = model.get_output_embeddings().weight.shape[0]
    classes = n_out != model.get_input_embeddings().weight.shape[0]  # a classifier's head
    labels = {int(k): v for k, v in (getattr(model.config, "id2label", None) or {}).items()}
    by_name = {str(v): k for k, v in labels.items()}
    if classes:  # a class is named by its label, not by a vocabulary word
        for name in (target, contrast):
            if isinstance(name, str) and name not in by_name:
                raise ValueError(f"{name!r} is not a class of this classifier; its classes are {list(by_name)}")
        target, contrast = (by_name[v] if isinstance(v, str) else v for v in (target, contrast))
    expl = explain(model, text, target=target, contrast=contrast, tokenizer=tokenizer, method=spec.name,
                   **spec.kwargs)
    logits = logits_at(model, expl.input_ids, expl.position, expl.attention_mask)[0]
    probs = torch.softmax(logits.double(), -1)
    tgt = int(expl.target[0])

    def decode(i):
        return tokenizer.convert_ids_to_tokens([int(i)])[0] if tokenizer is not None else str(int(i))

    def output(i):
        return str(labels.get(int(i), int(i))) if classes else decode(i)

    order = torch.argsort(logits, descending=True)[:top]
    rel = expl.relevance[0]
    tokens = expl.tokens[0] if expl.tokens else [decode(i) for i in expl.input_ids[0]]
    err = expl.conservation_error
    err = None if err is None else float(err[0])
    return {
        "model": getattr(model.config, "_name_or_path", None), "method": spec.label, "text": text,
        "position": expl.position, "predicted": output(order[0]), "target": output(tgt), "target_id": tgt,
        "contrast": None if expl.contrast is None else output(expl.contrast[0]),
        "explained": float(expl.logit[0]), "logit": float(logits[tgt]), "probability": float(probs[tgt]),
        "top": [{"token": output(i), "id": int(i), "logit": float(logits[i]), "probability": float(probs[i])}
                for i in order],
        "sum_relevance": float(rel.double().sum()), "conservation_error": err,
        "relevance": [{"token": t, "relevance": float(r)} for t, r in zip(tokens, rel.tolist())],
    }


def run_explain(args) -> int:
    from .models import load_model

    model, tokenizer = load_model(args.model, device=args.device, verbose=args.verbose)
    target = args.target if args.target_id is None else args.target_id
    report = explain_report(model, tokenizer, args.text, args.method, target, args.contrast, args.top)
    report["model"] = args.model
    if args.json:
        import json

        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0


def print_report(report: dict, file=None):
    """The report as a few readable lines and a per-token table, coloured by sign where a terminal shows colour."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, highlight=False, soft_wrap=True)
    what = f"logit[{report['target']!r}]" + (f" - logit[{report['contrast']!r}]" if report["contrast"] else "")
    console.print(f"[bold]{report['model']}[/bold], {report['method']}: explains {what} at position "
                  f"{report['position']} = {report['explained']:.4f}")
    if report["predicted"] == report["target"]:
        console.print(f"the model predicts {report['target']!r}: logit {report['logit']:.4f}, "
                      f"probability {report['probability']:.4f}")
    else:
        console.print(f"the model predicts {report['predicted']!r}; {report['target']!r} has logit "
                      f"{report['logit']:.4f}, probability {report['probability']:.4f}")
    console.print("top: " + ", ".join(f"{t['token']!r} {t['probability']:.3f}" for t in report["top"]))
    err = report["conservation_error"]
    console.print(f"sum R = {report['sum_relevance']:.4f}" + ("" if err is None else f", conservation error {err:.2e}"))
    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("#", justify="right", style="dim")
    table.add_column("token")
    table.add_column("relevance", justify="right")
    table.add_column("")
    scale = max([abs(r["relevance"]) for r in report["relevance"]] + [1e-12])
    for i, r in enumerate(report["relevance"]):
        v = r["relevance"]
        colour = "red" if v > 0 else "blue" if v < 0 else "dim"
        bar = "█" * round(8 * abs(v) / scale)
        table.add_row(str(i), r["token"], f"[{colour}]{v:+.4f}[/{colour}]", f"[{colour}]{bar}[/{colour}]")
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
