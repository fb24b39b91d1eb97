"""Model-randomisation sanity check (Adebayo et al. 2018), cascading from the top down.

Stage 0 is the trained model; each next stage additionally re-draws the parameters of one more
module, from the output head down to the embeddings: head, final norm, layer L-1, ..., layer 0,
embeddings. A re-drawn parameter gets values from a normal distribution with that parameter's own
mean and standard deviation (seeded), so the scale of the activations stays sane. A parameter shared
between modules (tied embeddings and head) is re-drawn at the first stage that reaches it.

Per sample and method, the Spearman rank correlation between the trained model's relevance and each
stage's (of the signed relevance, and of its absolute value). The explained target stays the trained
model's, so only the model changes. A method that explains the model decorrelates; one that ignores
the model (e.g. `random` with a fixed seed) stays at 1.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from ..architectures import architecture_of
from .base import Result, open_run, prepare, run_per_sample
from .common import relevance


def stages(model) -> list[tuple[str, list[torch.nn.Module]]]:
    """(name, modules) from the top down, as the model's architecture lists them."""
    return architecture_of(model).stages(model)


@torch.no_grad()
def _redraw(modules, seen: set, gen: torch.Generator):
    for module in modules:
        for p in module.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            mean, std = p.float().mean(), p.float().std() if p.numel() > 1 else torch.tensor(0.0)
            p.copy_((torch.randn(p.shape, generator=gen) * std + mean).to(p.dtype))


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


@dataclass(repr=False)
class RandomizationResult(Result):
    def plot(self, absolute: bool = False):
        """Mean rank correlation with the trained model's relevance against the randomisation stage."""
        import matplotlib.pyplot as plt

        names = self.summary["stages"]
        key = "abs_spearman" if absolute else "spearman"
        fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(names) + 2), 3.4))
        for method, row in self.summary["methods"].items():
            ax.plot(range(len(names)), row[key], marker="o", ms=3, label=method)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_ylabel(("|R| " if absolute else "") + "rank correlation with trained")
        ax.set_xlabel("randomised from the top down to")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def randomization_check(model, examples, methods=("mambalrp", "gradient_x_input", "random"), *, seed: int = 0,
                        target: str = "pred", out=None, overwrite: bool = False, progress: bool = True,
                        model_name: str | None = None, info: dict | None = None) -> RandomizationResult:
    """Rank correlation of each method's relevance with the trained model's, per cascading stage."""
    specs = prepare(methods)
    stage_list = stages(model)
    names = ["trained"] + [name for name, _ in stage_list]
    params = {"seed": seed, "target": target, "stages": names}
    run = open_run("randomization", model, examples, specs, params, out, overwrite, info, model_name)

    def compute(sid, ex, todo):
        ids = ex.input_ids.long()[None]
        if target == "label":
            tgt = torch.tensor([int(ex.target)])
        else:
            from .common import output_logits

            tgt = output_logits(model, ids).argmax(-1)
        base = {s.label: relevance(model, s, ids, tgt, sample=sid)[0][0] for s in todo}
        corr = {s.label: [1.0] for s in todo}
        acorr = {s.label: [1.0] for s in todo}
        work = copy.deepcopy(model)  # the trained model is never touched
        work_stages = stages(work)
        gen = torch.Generator().manual_seed(seed)  # same draws for every sample: one randomised model per stage
        seen: set = set()
        for _, modules in work_stages:
            _redraw(modules, seen, gen)
            for s in todo:
                r = relevance(work, s, ids, tgt, sample=sid)[0][0]
                corr[s.label].append(spearman(base[s.label], r))
                acorr[s.label].append(spearman(base[s.label].abs(), r.abs()))
        del work
        return [{"method": s.label, "target": int(tgt[0]), "stages": names, "spearman": corr[s.label],
                 "abs_spearman": acorr[s.label]} for s in todo]

    try:
        run_per_sample(run, list(enumerate(examples)), specs, compute, desc="randomization", progress=progress)
        records = list(run.records)
        summary = {"stages": names, "methods": {}}
        for s in specs:
            recs = [r for r in records if r["method"] == s.label]
            summary["methods"][s.label] = {
                key: [float(np.nanmean([r[key][j] for r in recs])) if recs else float("nan")
                      for j in range(len(names))]
                for key in ("spearman", "abs_spearman")}
            summary["methods"][s.label]["n"] = len(recs)
        run.write_summary(summary)
    finally:
        run.close()
    return RandomizationResult("randomization", records, summary, run.directory, params)
