"""Needle in a haystack on a grid of context length x needle depth.

Per cell: accuracy (the model's argmax at the last position is the example's target, the next code
digit) and the needle relevance share: the fraction of the positive relevance that sits on the needle,
    share = sum_{t in needle} max(R_t, 0) / sum_t max(R_t, 0).
"The needle" is the needle sentence span `[meta["needle_start"], meta["needle_end"])` when the task
gives it ("the secret code is 4 7 1 9"), else `Example.evidence`. Records also hold the share on the
evidence alone (the code digits, `share_digits`) and on the one digit the target copies
(`share_answer`, from `meta["answer_position"]`), and the needle's share among the haystack alone
(`share_haystack`: the tokens before the question, `meta["question_start"]`; the question and the
digits it repeats draw much of the relevance). The summary reports shares over correct retrievals
(what the finding is about) and over all examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .engine import Result, run_analysis
from .forward import logits_at, relevance, stack_ids
from .stats import mean_se


def needle_share(rel: torch.Tensor, evidence) -> float:
    pos = rel.double().clamp(min=0)
    total = float(pos.sum())
    if total <= 0:
        return float("nan")
    return float(pos[torch.as_tensor(evidence).long()].sum()) / total


@dataclass(repr=False)
class NeedleResult(Result):
    def cell_table(self, method: str, key: str = "share_correct") -> np.ndarray:
        """[len(context_lengths), len(depths)] array of a per-cell summary value."""
        lengths, depths = self.params["context_lengths"], self.params["depths"]
        cells = self.summary["cells"]
        grid = np.full((len(lengths), len(depths)), np.nan)
        for i, L in enumerate(lengths):
            for j, d in enumerate(depths):
                grid[i, j] = cells.get(_cell(L, d), {}).get(method, {}).get(key, np.nan)
        return grid

    def plot(self, method: str | None = None):
        """Two heatmaps (context length x depth): accuracy, and the needle relevance share of `method`
        on correct retrievals."""
        import matplotlib.pyplot as plt

        method = method or next(iter(self.summary["methods"]))
        lengths, depths = self.params["context_lengths"], self.params["depths"]
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 0.45 * len(lengths) + 2.4))
        for ax, key, title in ((axes[0], "accuracy", "accuracy"),
                               (axes[1], "share_correct", f"needle relevance share ({method})")):
            grid = self.cell_table(method, key)
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 else "black")
            ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
            ax.set_yticks(range(len(lengths)), [str(L) for L in lengths])
            ax.set_xlabel("needle depth")
            ax.set_ylabel("context length")
            ax.set_title(title, fontsize=10)
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        return fig

    def figures(self):
        return {f"needle_{m.replace(':', '_')}": self.plot(m) for m in self.summary["methods"]}


def needle_positions(ex) -> torch.Tensor:
    """The positions of "the needle" (see the module docstring): its sentence span, else the evidence."""
    meta = ex.meta or {}
    if "needle_start" in meta and "needle_end" in meta:
        return torch.arange(int(meta["needle_start"]), int(meta["needle_end"]))
    return ex.evidence.long()


def needle_digits(model, example, method="mambalrp", tokenizer=None, **kwargs):
    """The all-digits view: relevance of every code digit, generated after the question (teacher
    forcing with the true code), over the whole context -> `GenerationExplanation`.

    The prompt is the example without the digits the question already repeats (`meta["given"]`);
    the outputs are the needle's digit tokens (`Example.evidence`) in order.
    """
    from .generation import explain_generation

    given = int((example.meta or {}).get("given", 0))
    ids = example.input_ids.long()
    prompt = ids[: ids.shape[0] - given] if given else ids
    return explain_generation(model, prompt, target_ids=ids[example.evidence.long()], method=method,
                              tokenizer=tokenizer, **kwargs)


def _cell(L, d) -> str:
    return f"{L}@{d:g}"


def _default_examples(tokenizer, task_params):
    def make(L, d, n, seed):
        from .. import tasks

        return tasks.load("needle", n, seed, tokenizer=tokenizer, context_length=L, depth=d, **task_params)

    return make


def needle_grid(model, context_lengths=(128, 256, 512, 1024), depths=(0.0, 0.25, 0.5, 0.75, 1.0),
                methods=("mambalrp", "gradient_x_input"), *, n: int = 20, seed: int = 0, tokenizer=None,
                make_examples=None, batch_size: int = 1, out=None, overwrite: bool = False, progress: bool = True,
                model_name: str | None = None, info: dict | None = None, **task_params) -> NeedleResult:
    """Accuracy and needle relevance share per (context length, depth) cell and method.

    Examples come from `tasks.load("needle", n, seed + cell index, context_length=L, depth=d)`, or from
    `make_examples(L, d, n, seed)` when given. `result.plot(method)` draws the two heatmaps.
    """
    make = make_examples or _default_examples(tokenizer, task_params)
    samples, examples = [], []
    for ci, (L, d) in enumerate((L, d) for L in context_lengths for d in depths):
        for i, ex in enumerate(make(L, d, n, seed + ci)):
            samples.append(([int(L), float(d), i], ex))
            examples.append(ex)
    params = {"context_lengths": [int(L) for L in context_lengths], "depths": [float(d) for d in depths],
              "n": n, "seed": seed, "task_params": task_params}

    def compute(batch, spec):
        ids = stack_ids(batch)
        tgt = torch.tensor([int(ex.target) for _, ex in batch])
        pred = logits_at(model, ids).argmax(-1)
        rel, f, _ = relevance(model, spec, ids, tgt, sample=batch[0][0])
        recs = []
        for i, (sid, ex) in enumerate(batch):
            r = rel[i]
            needle = needle_positions(ex)
            meta = ex.meta or {}
            recs.append({"sample": sid, "context_length": sid[0], "depth": sid[1], "n_tokens": int(ids.shape[1]),
                         "target": int(tgt[i]), "pred": int(pred[i]), "correct": bool(pred[i] == tgt[i]),
                         "f": float(f[i]), "share": needle_share(r, needle),
                         "share_digits": needle_share(r, ex.evidence),
                         # the same share among the haystack only (the tokens before the question)
                         "share_haystack": needle_share(r[: int(meta.get("question_start", r.shape[0]))], needle),
                         "share_answer": needle_share(r, [meta["answer_position"]]) if "answer_position" in meta
                         else None,
                         "top1_on_needle": float(int(torch.argmax(r)) in set(needle.tolist()))})
        return recs

    def summarize(records, specs):
        summary = {"methods": {}, "cells": {}}
        for spec in specs:
            recs = [r for r in records if r["method"] == spec.label]
            ok = [r for r in recs if r["correct"]]
            summary["methods"][spec.label] = {
                "accuracy": mean_se(float(r["correct"]) for r in recs)[0],
                "share_correct": mean_se(r["share"] for r in ok)[0],
                "share_correct_se": mean_se(r["share"] for r in ok)[1],
                "share_all": mean_se(r["share"] for r in recs)[0],
                "share_haystack_correct": mean_se(r["share_haystack"] for r in ok)[0],
                "share_digits_correct": mean_se(r["share_digits"] for r in ok)[0],
                "share_answer_correct": mean_se(r["share_answer"] for r in ok)[0],
                "majority_on_needle": mean_se(float(r["share"] > 0.5) for r in ok)[0],
                "top1_on_needle": mean_se(r["top1_on_needle"] for r in ok)[0],
                "n": len(recs), "n_correct": len(ok),
            }
            for L in context_lengths:
                for d in depths:
                    cell = [r for r in recs if r["context_length"] == int(L) and r["depth"] == float(d)]
                    summary["cells"].setdefault(_cell(L, d), {})[spec.label] = {
                        "accuracy": mean_se(float(r["correct"]) for r in cell)[0],
                        "share_correct": mean_se(r["share"] for r in cell if r["correct"])[0],
                        "share_all": mean_se(r["share"] for r in cell)[0],
                        "share_haystack_correct": mean_se(r["share_haystack"] for r in cell if r["correct"])[0],
                        "n": len(cell),
                    }
        return summary

    return run_analysis("needle", model, examples, methods, compute, summarize, params=params, result=NeedleResult,
                        samples=samples, batch_size=batch_size, out=out, overwrite=overwrite, progress=progress,
                        model_name=model_name, info=info)
