"""How much explain(precision="tf32" / "model") departs from the exact float32 path, on one model and length.

    python benchmarks/precision_agreement.py --device cuda --size 1.4b --dtype bfloat16 --length 2048
    python benchmarks/precision_agreement.py --toy toy/needle --length 1024 --samples 16   # a trained model
    python benchmarks/precision_agreement.py --device cuda --toy toy/needle --method integrated_gradients

A random model (`--arch`, `--size`, random token ids, target token 0), or with `--toy` an embedded
trained model cast to `--dtype`, on examples of its own task (its target tokens).

Prints, per precision, the conservation error |sum R - f| / |f|, the same relative to sum |R|, and
the agreement with the float32 relevance (Pearson r over tokens, overlap of the 10 most relevant
tokens), each averaged over `--samples` random inputs, plus the seconds per explanation.

`--method integrated_gradients` (50 steps) compares with f - f(baseline) instead of f and adds a
row "float32, N steps" (`--reference-steps`): how far IG's own integration error moves its
relevance, the yardstick for how much a precision's rounding matters to it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import mambalrp_tools as mlt
from mambalrp_tools import tasks
from mambalrp_tools.numerics import PRECISIONS
from bench_explain import SIZES, build


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="mamba")
    p.add_argument("--size", default="130m")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--toy", help="an embedded trained model (toy/needle, toy/sentiment, ...) instead of a random one")
    p.add_argument("--method", default="mambalrp", choices=("mambalrp", "integrated_gradients"))
    p.add_argument("--reference-steps", type=int, default=400, help="integrated_gradients: the finer integration to compare with")
    p.add_argument("--json")
    args = p.parse_args()
    # (precision, explain's keyword arguments) per row; the first is the float32 reference
    runs = {prec: {"precision": prec} for prec in PRECISIONS}
    if args.method == "integrated_gradients":
        runs = {k: v | {"n_steps": 50} for k, v in runs.items()}
        runs[f"float32, {args.reference_steps} steps"] = {"precision": "float32", "n_steps": args.reference_steps}
    rows = {name: {"conservation": [], "conservation_abs": [], "pearson": [], "top10": [], "seconds": []}
            for name in runs}
    if args.toy:
        model, _ = mlt.load_model(args.toy, device=args.device, dtype=getattr(torch, args.dtype))
        task = args.toy.split("/")[-1].split("-")[0]  # toy/needle-mamba2 -> needle
        params = {"context_length": args.length} if task == "needle" else {}
        inputs = [(ex.input_ids[None].to(args.device), ex.target)
                  for ex in tasks.load(task, args.samples, seed=0, **params)]
        label = f"{args.toy} (trained) cast to {args.dtype}, task {task}{', T=%d' % args.length if params else ''}"
    else:
        model = build(args.arch, args.size, args.device, args.dtype)
        vocab = SIZES[(args.arch, args.size)]["vocab_size"]
        g = torch.Generator().manual_seed(0)
        inputs = [(torch.randint(0, vocab, (1, args.length), generator=g).to(args.device), 0)
                  for _ in range(args.samples)]
        label = f"{args.arch} {args.size} {args.dtype}, T={args.length}, random inputs"
    for ids, target in inputs:
        out = {}
        for name, kwargs in runs.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            e = mlt.explain(model, ids, target=target, method=args.method, **kwargs)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rows[name]["seconds"].append(time.perf_counter() - start)
            out[name] = e
        ref = out["float32"].relevance[0]
        for name, e in out.items():
            r = e.relevance[0]
            goal = e.logit[0] - (0 if e.baseline_logit is None else e.baseline_logit[0])  # what sum R should equal
            rows[name]["conservation"].append(float(e.conservation_error[0]))
            rows[name]["conservation_abs"].append(float((r.sum() - goal).abs() / r.abs().sum()))
            rows[name]["pearson"].append(float(torch.corrcoef(torch.stack([r, ref]))[0, 1]))
            k = min(10, r.numel())  # short inputs (sentiment) have fewer than 10 tokens
            top = lambda x: set(x.abs().topk(k).indices.tolist())  # noqa: E731
            rows[name]["top10"].append(len(top(r) & top(ref)) / k)
    f = "(f - f(b))" if args.method == "integrated_gradients" else "f"
    print(f"# {args.method}, {label}, {len(inputs)} inputs, device {args.device}")
    print(f"| precision | |sum R - {f}| / |{f}| | |sum R - {f}| / sum |R| | Pearson vs float32 | top-10 overlap | s per explain |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for name, r in rows.items():
        mean = {k: sum(v) / len(v) for k, v in r.items()}
        summary[name] = mean | {"max_conservation": max(r["conservation"])}
        print(f"| {name} | {mean['conservation']:.2e} (max {max(r['conservation']):.2e}) | {mean['conservation_abs']:.2e} "
              f"| {mean['pearson']:.4f} | {mean['top10']:.2f} | {mean['seconds']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "samples": rows}, f, indent=1)


if __name__ == "__main__":
    main()
