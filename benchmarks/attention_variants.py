"""How far the hidden-attention variants ("official" vs "abs") differ on the embedded models.

Per model and method: the Spearman correlation of the two variants' scores per sample, and the median
share of each variant's mass on the explained (last) token. Usage: python benchmarks/attention_variants.py [n]
"""

from __future__ import annotations

import sys

import torch
from scipy.stats import spearmanr

import mambalrp_tools as mlt
from mambalrp_tools import tasks

MODELS = [("toy/sentiment", "sentiment"), ("toy/bios", "bios"), ("toy/needle", "needle")]


def main(n: int = 20) -> None:
    torch.set_num_threads(1)
    for name, task in MODELS:
        model, tok = mlt.load_model(name)
        examples = tasks.load(task, n=n, seed=0, tokenizer=tok)
        lengths = [ex.input_ids.numel() for ex in examples]
        for method in ("attention_rollout", "mamba_attr"):
            rho, own = [], {"official": [], "abs": []}
            for ex in examples:
                r = {v: mlt.explain(model, ex.input_ids[None], method=method, variant=v).relevance[0]
                     for v in own}
                rho.append(spearmanr(r["official"].numpy(), r["abs"].numpy()).statistic)
                for v in own:
                    own[v].append(float(r[v][-1] / r[v].sum()))
            rho = torch.tensor(rho)
            print(f"{name} ({n} examples, {min(lengths)}-{max(lengths)} tokens) {method}: "
                  f"Spearman(official, abs) median {rho.nanmedian():.2f}, min {rho.min():.2f}; "
                  f"share on the explained token: official {torch.tensor(own['official']).median():.2f}, "
                  f"abs {torch.tensor(own['abs']).median():.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
