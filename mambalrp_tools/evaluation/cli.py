"""`mambalrp-tools evaluate ANALYSIS --model ID --out DIR [options]`: one subcommand per analysis.

Each analysis' options are read from its function's signature (`evaluation.faithfulness`, ...), so
the command line offers exactly what the library does, with the library's defaults. Under torchrun or
`accelerate launch` the processes share the work (see `evaluation.distributed`); rank 0 prints. Examples come
from the toy model's task (or `--task`: a task name or a `.jsonl` file of examples); the run folder is
resumed when it exists; the summary is printed as a table and the figures go to DIR/figures.
"""

from __future__ import annotations

import argparse
import inspect
import sys

#: analysis -> (module, function)
ANALYSES = {
    "faithfulness": ("faithfulness", "faithfulness"),
    "conservation": ("conservation", "conservation"),
    "alignment": ("alignment", "copy_alignment"),
    "needle": ("needle", "needle_grid"),
    "bias": ("bias", "gender_bias"),
    "long-range": ("long_range", "long_range"),
    "randomization": ("randomization", "randomization_check"),
}
#: the analysis' usual task, when the model is not a toy one whose name says it
DEFAULT_TASK = {"alignment": "copying", "needle": "needle", "bias": "bios"}
#: arguments the command line supplies itself (model, examples, run folder, ...) or cannot express
SUPPLIED = {"model", "examples", "out", "overwrite", "progress", "model_name", "info", "tokenizer", "make_examples",
            "swap", "class_names", "n", "seed"}
#: arguments a function accepts but does not use on the command line's path
UNUSED = {("bias", "batch_size")}  # the gender swap changes lengths: always one sample at a time
#: an analysis argument whose name the shared options already take
RENAMED = {("randomization", "seed"): "redraw-seed"}
HELP = {
    "methods": "comma-separated methods; an ablation is mambalrp:-ssm, options ig:n_steps=20",
    "replacement": "what replaces a removed token: unk, pad, zero (embedding), delete, or a token id",
    "steps": "perturbation steps from no token to all tokens removed",
    "target": "explain the model's prediction (pred) or the example's label (label)",
    "position": "the explained position",
    "batch_size": "samples of equal length explained together (a kill loses at most one batch)",
    "score_batch_size": "perturbed inputs run together",
    "k": "how many of the most relevant tokens",
    "context_lengths": "comma-separated context lengths (grid rows)",
    "depths": "comma-separated needle depths in [0, 1] (grid columns)",
    "matrix": "also compute the output x source relevance matrix of one whole copy",
    "top_k": "most relevant tokens listed per class",
    "min_count": "occurrences a token needs to be listed",
    "redraw_seed": "seed of the re-drawn parameters",
}


def add_parser(sub):
    p = sub.add_parser("evaluate", help="run one of the paper's analyses into a resumable run folder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    analyses = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for name in ANALYSES:
        fn = analysis_function(name)
        doc = (inspect.getdoc(fn) or "").split("\n\n")[0]
        a = analyses.add_parser(name, help=doc.splitlines()[0] if doc else name, description=doc)
        _shared_options(a, name)
        for param, flag, default, kind in analysis_options(name):
            kw = {"default": default, "dest": f"opt_{param}",
                  "help": f"{HELP.get(flag.replace('-', '_'), param)} (default: {_show(default)})"}
            if kind is bool:
                a.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, **kw)
            else:
                a.add_argument(f"--{flag}", type=_converter(default), metavar=param.upper(), **kw)
        a.set_defaults(run=run)
    return p


def analysis_function(name):
    import importlib

    module, fn = ANALYSES[name]
    return getattr(importlib.import_module(f"mambalrp_tools.evaluation.{module}"), fn)


def analysis_options(name) -> list[tuple[str, str, object, type]]:
    """(parameter, flag, library default, type) for every option of the analysis function."""
    out = []
    for param in inspect.signature(analysis_function(name)).parameters.values():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or param.default is param.empty:
            continue
        if (param.name in SUPPLIED and (name, param.name) not in RENAMED) or (name, param.name) in UNUSED:
            continue
        flag = RENAMED.get((name, param.name), param.name.replace("_", "-"))
        out.append((param.name, flag, param.default, type(param.default)))
    return out


def _shared_options(p, name):
    p.add_argument("--model", required=True, help="toy/NAME, a local directory or a hub id")
    if name != "needle":
        p.add_argument("--task", default=None,
                       help="task name for tasks.load, or a .jsonl file of examples (default: the toy model's task)")
    # needle_grid draws its own examples: its n is the library's default; elsewhere n is the task draw's
    n = inspect.signature(analysis_function(name)).parameters["n"].default if name == "needle" else 100
    p.add_argument("--n", type=int, default=n, help="examples" + (" per grid cell" if name == "needle" else "")
                   + f" (default: {n})")
    p.add_argument("--seed", type=int, default=0, help="seed of the examples (default: 0)")
    p.add_argument("--task-param", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to the task generator (repeatable)")
    p.add_argument("--out", required=True, help="run folder (resumed if it exists)")
    p.add_argument("--overwrite", action="store_true", help="start the folder afresh (needed for a folder of "
                                                            "another evaluation)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--no-figures", action="store_true", help="do not save figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _show(default):
    if isinstance(default, (tuple, list)):
        return ",".join(str(v) for v in default)
    return str(default)


def _converter(default):
    """Command-line text -> the type of the library's default (comma-separated for sequences)."""
    from .specs import parse_value

    if isinstance(default, (tuple, list)):
        item = type(default[0]) if default else str
        if item is str:
            return lambda text: [v.strip() for v in text.split(",") if v.strip()]
        return lambda text: [item(v) for v in text.split(",") if v.strip()]
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return type(default)
    return parse_value  # strings and None: a number where one is given (a token id), else the text


def run(args) -> int:
    from ..models import load_model
    from ..tasks.io import load_examples

    name = args.analysis
    task = getattr(args, "task", None)
    if name != "needle" and task is None:
        if args.model.startswith("toy/"):
            task = args.model[len("toy/"):]
        elif name in DEFAULT_TASK:
            task = DEFAULT_TASK[name]
        else:
            raise ValueError(f"--task is required for {args.model!r} (a task name or a .jsonl file)")
    task_params = {}
    for kv in args.task_param:
        if "=" not in kv:
            raise ValueError(f"--task-param takes KEY=VALUE, got {kv!r}")
        key, value = kv.split("=", 1)
        from .specs import parse_value

        task_params[key] = parse_value(value)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .distributed import local_device, world

    model, tokenizer = load_model(args.model, device=local_device(args.device), verbose=getattr(args, "verbose", False))
    fn = analysis_function(name)
    accepted = inspect.signature(fn).parameters
    kwargs = {param: getattr(args, f"opt_{param}") for param, *_ in analysis_options(name)}
    kwargs.update(out=args.out, overwrite=args.overwrite, progress=not args.quiet, model_name=args.model,
                  info={"model_id": args.model, "task": task or "needle", "task_params": task_params,
                        "seed": args.seed, "n": args.n, "command": ["mambalrp-tools", "evaluate", *sys.argv[2:]]
                        if sys.argv[1:2] == ["evaluate"] else None})
    if "tokenizer" in accepted:
        kwargs["tokenizer"] = tokenizer
    from .runs import RunIncomplete, RunLocked

    try:
        if name == "needle":
            result = fn(model, n=args.n, seed=args.seed, **kwargs, **task_params)
        else:
            examples = load_examples(task, args.n, args.seed, tokenizer=tokenizer, **task_params)
            result = fn(model, examples, **kwargs)
    except RunLocked as err:  # a user's situation, not a bug: one line like every other user error
        if getattr(args, "debug", False):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunIncomplete as err:  # another rank failed; its traceback is in its own output
        if getattr(args, "debug", False):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not world().main:  # under torchrun, rank 0 reports for all
        return 0
    print_summary(result)
    if not args.no_figures:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..viz import save_figure

        for fig_name, fig in result.figures().items():
            save_figure(fig, fig_name, directory=result.run_dir / "figures")
            plt.close(fig)
    print(f"run folder: {result.run_dir}")
    return 0


def print_summary(result, file=None):
    """The summary as one aligned table: method, metric, mean ± s.e., n."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, highlight=False, soft_wrap=True)
    table = Table(title=f"{result.analysis}: {len(result.records)} records", title_justify="left", box=None,
                  pad_edge=False, show_edge=False)
    for col, justify in (("method", "left"), ("metric", "left"), ("mean ± s.e.", "right"), ("n", "right")):
        table.add_column(col, justify=justify)
    last = None
    for row in result.metrics():
        se = "" if row["se"] != row["se"] else f" ± {row['se']:.3g}"
        table.add_row(row["method"] if row["method"] != last else "", row["metric"], f"{row['mean']:.4g}{se}",
                      "" if row["n"] is None else str(row["n"]))
        last = row["method"]
    console.print(table)
    if result.analysis == "bias":
        cf = result.summary["counterfactual"]
        console.print(f"gender swap: p(label) Wilcoxon p = {cf['swap']['wilcoxon_p']:.3g}, "
                      f"stereotype Wilcoxon p = {cf['stereotype']['wilcoxon_p']:.3g}, "
                      f"flip rate {cf['flip_rate']:.3f}")
