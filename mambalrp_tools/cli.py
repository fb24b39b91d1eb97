"""Command line: `mambalrp-tools <command>`; each subcommand's logic lives in its own module."""

from __future__ import annotations

import argparse
import sys


def _explain(args):
    from . import explain, load_model

    model, tokenizer = load_model(args.model)
    expl = explain(model, args.text, tokenizer=tokenizer, method=args.method)
    words = expl.to_words()
    for k in words._real(0):
        print(f"{float(words.relevance[0, k]):+.4f}  {words.tokens[0][k]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mambalrp-tools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("explain", help="print the relevance of each word of a text")
    p.add_argument("--model", default="toy/needle")
    p.add_argument("--method", default="mambalrp")
    p.add_argument("text")
    p.set_defaults(run=_explain)
    from .evaluation.cli import add_parser as add_evaluate

    add_evaluate(sub)
    from .zoo.train import register as register_training  # train-toy, finetune

    register_training(sub)
    from .notebooks import add_parser as add_notebooks

    add_notebooks(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
