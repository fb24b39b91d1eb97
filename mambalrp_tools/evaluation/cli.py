"""`mambalrp-tools evaluate ANALYSIS --model ID [--task NAME] --methods a,b --n N --out DIR [--overwrite]`.

Loads the model (and its tokenizer), draws the task's examples (`tasks.load`, or a `.jsonl` file of
examples), runs the analysis into the run folder (resuming it when it exists), prints the summary and
saves the figures to DIR/figures.
"""

from __future__ import annotations

import json
import sys

DEFAULT_METHODS = {
    "faithfulness": "mambalrp,lrp_ln,gradient_x_input,random",
    "conservation": "mambalrp,gradient_x_input",
    "alignment": "mambalrp,lrp_ln,gradient_x_input,random",
    "needle": "mambalrp,gradient_x_input",
    "bias": "mambalrp",
    "long-range": "mambalrp",
    "randomization": "mambalrp,gradient_x_input,random",
}
#: the analysis' usual task, when the model is not a toy one whose name says it
DEFAULT_TASK = {"alignment": "copying", "needle": "needle", "bias": "bios"}


def add_parser(sub):
    p = sub.add_parser("evaluate", help="run an evaluation (resumable) into a run folder",
                       description=__doc__)
    p.add_argument("analysis", choices=sorted(DEFAULT_METHODS))
    p.add_argument("--model", required=True, help="toy/NAME, a local directory or a hub id")
    p.add_argument("--task", default=None,
                   help="task name for tasks.load, or a .jsonl file of examples (default: the toy model's task)")
    p.add_argument("--methods", default=None,
                   help="comma-separated; an ablation is written mambalrp:-ssm, options ig:n_steps=20")
    p.add_argument("--n", type=int, default=100, help="examples (per grid cell for needle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder (resumed if it exists)")
    p.add_argument("--overwrite", action="store_true",
                   help="start the folder afresh (needed for a folder of another evaluation)")
    p.add_argument("--task-param", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to tasks.load (repeatable)")
    p.add_argument("--replacement", default="unk", help="faithfulness: unk, pad, zero, delete or a token id")
    p.add_argument("--steps", type=int, default=20, help="faithfulness: perturbation steps")
    p.add_argument("--target", default=None, choices=("pred", "label"),
                   help="explain the model's prediction or the example's label")
    p.add_argument("--k", type=int, default=10, help="long-range: top-k tokens")
    p.add_argument("--context-lengths", default="128,256,512,1024", help="needle grid rows")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle grid columns")
    p.add_argument("--batch-size", type=int, default=1,
                   help="samples of equal length explained together (a kill loses at most one batch)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)
    return p


def _value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run(args) -> int:
    from .. import load_model
    from .runs import RunLocked, RunMismatch

    task = args.task
    if task is None:
        if args.model.startswith("toy/"):
            task = args.model[len("toy/"):]
        elif args.analysis in DEFAULT_TASK:
            task = DEFAULT_TASK[args.analysis]
        else:
            print(f"error: --task is required for {args.model!r} (a task name or a .jsonl file)", file=sys.stderr)
            return 2
    task_params = {}
    for kv in args.task_param:
        if "=" not in kv:
            print(f"error: --task-param takes KEY=VALUE, got {kv!r}", file=sys.stderr)
            return 2
        key, value = kv.split("=", 1)
        task_params[key] = _value(value)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device=args.device)
    info = {"model_id": args.model, "task": task, "task_params": task_params, "seed": args.seed, "n": args.n,
            "command": ["mambalrp-tools", "evaluate", *sys.argv[2:]] if sys.argv[1:2] == ["evaluate"] else None}
    common = dict(methods=args.methods or DEFAULT_METHODS[args.analysis], out=args.out, overwrite=args.overwrite,
                  progress=not args.quiet, model_name=args.model, info=info)
    target = {"target": args.target} if args.target else {}
    a = args.analysis
    try:
        result = _dispatch(a, args, model, tokenizer, task, task_params, common, target)
    except (RunMismatch, RunLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result)
    if a == "bias":
        print("counterfactual:", json.dumps(result.summary["counterfactual"], indent=1))
    if not args.no_figures:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..viz import save_figure

        for name, fig in result.figures().items():
            save_figure(fig, name, directory=result.run_dir / "figures")
            plt.close(fig)
    print(f"run folder: {result.run_dir}")
    return 0


def _dispatch(a, args, model, tokenizer, task, task_params, common, target):
    from . import (conservation, copy_alignment, faithfulness, gender_bias, load_examples, long_range,
                   needle_grid, randomization_check)

    if a == "needle":
        result = needle_grid(model, [int(v) for v in args.context_lengths.split(",")],
                             [float(v) for v in args.depths.split(",")], n=args.n, seed=args.seed,
                             tokenizer=tokenizer, batch_size=args.batch_size, **common, **task_params)
    else:
        examples = load_examples(task, args.n, args.seed, tokenizer=tokenizer, **task_params)
        if a == "faithfulness":
            result = faithfulness(model, examples, replacement=_value(args.replacement), steps=args.steps,
                                  tokenizer=tokenizer, batch_size=args.batch_size, **target, **common)
        elif a == "conservation":
            result = conservation(model, examples, batch_size=args.batch_size, **target, **common)
        elif a == "alignment":
            result = copy_alignment(model, examples, batch_size=args.batch_size, **common)
        elif a == "bias":
            result = gender_bias(model, examples, tokenizer=tokenizer, **common)
        elif a == "long-range":
            result = long_range(model, examples, k=args.k, batch_size=args.batch_size, **target, **common)
        else:
            result = randomization_check(model, examples, seed=args.seed, **target, **common)
    return result
