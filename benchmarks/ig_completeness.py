"""How well Integrated Gradients' path integral converges on the embedded trained models, per baseline.

    python benchmarks/ig_completeness.py                       # CPU, a few minutes
    python benchmarks/ig_completeness.py --samples 8 --steps 50 400

Per model: f(alpha e) along the straight path from the zero embedding (where the model's output
rises), and IG's completeness error |sum R - (f - f(b))| / |f - f(b)| for the zero baseline and
for token baselines, averaged over `--samples` examples of the model's own task. With the zero
baseline the path starts where every RMSNorm input is below its eps, so f(alpha e) jumps to about
f(e) over a short first stretch of the path and a 50-node quadrature integrates a near-step.
"""

from __future__ import annotations

import argparse

import torch

import mambalrp_tools as mlt
from mambalrp_tools import tasks
from mambalrp_tools.evaluation.forward import logits_at

TOYS = ("toy/sentiment", "toy/needle", "toy/copying", "toy/bios")
ALPHAS = (0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toys", nargs="+", default=list(TOYS))
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, nargs="+", default=[50])
    p.add_argument("--baselines", nargs="+", default=["zero", "1", "5"], help='"zero" or token ids')
    p.add_argument("--length", type=int, default=256, help="context length of the needle task")
    args = p.parse_args()
    baselines = [b if b == "zero" else int(b) for b in args.baselines]
    cols = [f"{b} baseline, {n} steps" for n in args.steps for b in args.baselines]
    alphas = ", ".join(f"{a:g}" for a in ALPHAS)
    print(f"| model | f(alpha e) / f(e) at alpha = {alphas} | " + " | ".join(cols) + " |")
    print("|---" * (2 + len(cols)) + "|")
    for toy in args.toys:
        model, _ = mlt.load_model(toy)
        task = toy.split("/")[-1].split("-")[0]
        params = {"context_length": args.length} if task == "needle" else {}
        examples = tasks.load(task, args.samples, seed=0, **params)
        ex = examples[0]
        with torch.no_grad():
            emb = model.get_input_embeddings()(ex.input_ids[None])
        path = [float(logits_at(model, None, inputs_embeds=a * emb)[0, ex.target]) for a in ALPHAS]
        errors = []
        for n in args.steps:
            for b in baselines:
                err = [float(mlt.explain(model, e.input_ids[None], target=e.target, method="integrated_gradients",
                                         baseline=b, n_steps=n).conservation_error[0]) for e in examples]
                errors.append(sum(err) / len(err))
        print(f"| {toy} | " + ", ".join(f"{v / path[-1]:.2f}" for v in path) + " | "
              + " | ".join(f"{e:.3f}" for e in errors) + " |", flush=True)


if __name__ == "__main__":
    main()
