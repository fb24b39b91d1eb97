"""How much explain(precision="tf32" / "model") departs from the exact float32 path, on one model and length.

    python benchmarks/precision_agreement.py --device cuda --size 1.4b --dtype bfloat16 --length 2048

Prints, per precision, the conservation error |sum R - f| / |f|, the same relative to sum |R|, and
the agreement with the float32 relevance (Pearson r over tokens, overlap of the 10 most relevant
tokens), each averaged over `--samples` random inputs, plus the seconds per explanation.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import mambalrp_tools as mlt
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
    p.add_argument("--json")
    args = p.parse_args()
    model = build(args.arch, args.size, args.device, args.dtype)
    vocab = SIZES[(args.arch, args.size)]["vocab_size"]
    g = torch.Generator().manual_seed(0)
    rows = {prec: {"conservation": [], "conservation_abs": [], "pearson": [], "top10": [], "seconds": []}
            for prec in PRECISIONS}
    for _ in range(args.samples):
        ids = torch.randint(0, vocab, (1, args.length), generator=g).to(args.device)
        out = {}
        for prec in PRECISIONS:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            e = mlt.explain(model, ids, target=0, precision=prec)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rows[prec]["seconds"].append(time.perf_counter() - start)
            out[prec] = e
        ref = out["float32"].relevance[0]
        for prec, e in out.items():
            r = e.relevance[0]
            rows[prec]["conservation"].append(float(e.conservation_error[0]))
            rows[prec]["conservation_abs"].append(float((r.sum() - e.logit[0]).abs() / r.abs().sum()))
            rows[prec]["pearson"].append(float(torch.corrcoef(torch.stack([r, ref]))[0, 1]))
            top = lambda x: set(x.abs().topk(10).indices.tolist())  # noqa: E731
            rows[prec]["top10"].append(len(top(r) & top(ref)) / 10)
    print(f"# {args.arch} {args.size} {args.dtype}, T={args.length}, {args.samples} random inputs, device {args.device}")
    print("| precision | |sum R - f| / |f| | |sum R - f| / sum |R| | Pearson vs float32 | top-10 overlap | s per explain |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for prec, r in rows.items():
        mean = {k: sum(v) / len(v) for k, v in r.items()}
        summary[prec] = mean | {"max_conservation": max(r["conservation"])}
        print(f"| {prec} | {mean['conservation']:.2e} (max {max(r['conservation']):.2e}) | {mean['conservation_abs']:.2e} "
              f"| {mean['pearson']:.4f} | {mean['top10']:.2f} | {mean['seconds']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "samples": rows}, f, indent=1)


if __name__ == "__main__":
    main()
