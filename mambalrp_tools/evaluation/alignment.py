"""Copying alignment: does the relevance of a copied token point at its source position?

Per example (one copied output token, `Example.target`, read at the last position) the relevance
over `candidates` (the source segment; all positions if None) is scored against the evidence (its
source position): ROC-AUC (positive = evidence) and top-1 hit (the most relevant candidate is
evidence). The copied token is explained whatever the model predicts; `correct` records whether
the model got it right, and the summary reports both all examples and the correct ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Result, open_run, prepare, run_per_method, stack_ids
from .common import mean_se, output_logits, relevance, roc_auc


def alignment_scores(rel: torch.Tensor, evidence, candidates=None) -> dict:
    """ROC-AUC and top-1 hit of one relevance vector [T] against the evidence positions."""
    T = rel.shape[-1]
    cand = torch.arange(T) if candidates is None else torch.as_tensor(candidates).long()
    ev = set(torch.as_tensor(evidence).long().flatten().tolist())
    scores = rel[cand].double()
    positive = [int(c) in ev for c in cand.tolist()]
    top = int(cand[int(torch.argmax(scores))])  # first maximum: ties do not favour the evidence
    return {"auc": roc_auc(scores.tolist(), positive), "top1": float(top in ev), "top1_position": top}


@dataclass(repr=False)
class AlignmentResult(Result):
    def plot(self):
        """Bar chart of mean ROC-AUC and top-1 hit rate per method (the matrix view is
        `alignment_matrix` / `GenerationExplanation.plot`)."""
        import matplotlib.pyplot as plt
        import numpy as np

        methods = list(self.summary["methods"])
        rows = [self.summary["methods"][m] for m in methods]
        x = np.arange(len(methods))
        fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2.5, 3.4))
        for off, key, label in ((-0.2, "auc", "ROC-AUC"), (0.2, "top1", "top-1 hit")):
            ax.bar(x + off, [r[key] for r in rows], 0.4, yerr=[r[key + "_se"] for r in rows], label=label)
        ax.set_xticks(x, methods, rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax.legend(fontsize=8)
        ax.set_title("copying alignment")
        fig.tight_layout()
        return fig

    def plot_matrices(self):
        """Output token x source token relevance of one whole copy per method (each row scaled by its
        max |R|): a faithful method draws the diagonal."""
        import matplotlib.pyplot as plt

        mats = self.summary.get("matrices", {})
        if not mats:
            raise ValueError("no alignment matrices: run copy_alignment with matrix=True")
        fig, axes = plt.subplots(1, len(mats), figsize=(2.6 * len(mats) + 0.8, 3.0), squeeze=False)
        for ax, (method, m) in zip(axes[0], mats.items()):
            mat = torch.tensor(m["relevance"])
            mat = mat / mat.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
            ax.imshow(mat.numpy(), cmap="bwr", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_title(method, fontsize=9)
            ax.set_xlabel("source position")
        axes[0][0].set_ylabel("copied token")
        fig.tight_layout()
        return fig

    def figures(self):
        figs = {"alignment": self.plot()}
        if self.summary.get("matrices"):
            figs["alignment_matrix"] = self.plot_matrices()
        return figs


def alignment_matrix(model, example, method="mambalrp", tokenizer=None, **kwargs):
    """The output-token x source-token relevance matrix of a whole copy, from one copying example.

    The prompt is the source segment and everything up to the first copied token; the outputs are
    the source symbols in order (teacher forcing). Returns a `GenerationExplanation`; `.plot(columns=
    example.candidates)` draws the source columns: a faithful method gives a diagonal.
    """
    from .generation import explain_generation

    if example.candidates is None:
        raise ValueError("the example needs `candidates` (the source segment) to build the copy matrix")
    src = torch.as_tensor(example.candidates).long()
    n_copied = _n_copied(example)
    prompt = example.input_ids[: example.input_ids.shape[0] - n_copied]
    return explain_generation(model, prompt, target_ids=example.input_ids[src], method=method,
                              tokenizer=tokenizer, **kwargs)


def _n_copied(example) -> int:
    """How many source symbols are already copied at the end of the input (meta, else the evidence index)."""
    meta = example.meta or {}
    for key in ("n_copied", "index", "copied", "j"):
        if key in meta:
            return int(meta[key])
    src = torch.as_tensor(example.candidates).long()
    return int((src == int(example.evidence[0])).nonzero()[0, 0])


def copy_alignment(model, examples, methods=("mambalrp", "gradient_x_input", "random"), *,
                   position: int = -1, batch_size: int = 1, matrix: bool = True, out=None,
                   overwrite: bool = False, progress: bool = True, model_name: str | None = None,
                   info: dict | None = None) -> AlignmentResult:
    """ROC-AUC and top-1 hit rate of relevance against the source position, per method.

    matrix: also compute the output x source matrix of one whole copy (the shortest example with
    candidates) per method, for `result.plot_matrices()` (kept in the summary, not in the records).
    """
    specs = prepare(methods)
    params = {"position": position}
    run = open_run("alignment", model, examples, specs, params, out, overwrite, info, model_name)

    def compute(batch, spec):
        ids = stack_ids(batch)
        tgt = torch.tensor([int(ex.target) for _, ex in batch])
        pred = output_logits(model, ids, position=position).argmax(-1)
        rel, f, _ = relevance(model, spec, ids, tgt, position=position, sample=batch[0][0])
        return [{"sample": sid, "target": int(tgt[i]), "correct": bool(pred[i] == tgt[i]), "f": float(f[i]),
                 "n_tokens": int(ids.shape[1]), **alignment_scores(rel[i], ex.evidence, ex.candidates)}
                for i, (sid, ex) in enumerate(batch)]

    try:
        run_per_method(run, list(enumerate(examples)), specs, compute, batch_size=batch_size,
                       desc="alignment", progress=progress)
        records = list(run.records)
        summary = {"methods": {}}
        for spec in specs:
            recs = [r for r in records if r["method"] == spec.label]
            row = {}
            for key in ("auc", "top1"):
                row[key], row[key + "_se"], _ = mean_se(r[key] for r in recs)
                row[key + "_correct"] = mean_se(r[key] for r in recs if r["correct"])[0]
            row["accuracy"] = mean_se(float(r["correct"]) for r in recs)[0]
            row["n"] = len(recs)
            summary["methods"][spec.label] = row
        with_src = [ex for ex in examples if ex.candidates is not None]
        if matrix and with_src:
            ex = min(with_src, key=lambda e: e.input_ids.shape[0])
            summary["matrices"] = {}
            for spec in specs:
                g = alignment_matrix(model, ex, spec)
                cols = torch.as_tensor(ex.candidates).long()
                summary["matrices"][spec.label] = {
                    "relevance": [[round(float(v), 6) for v in row] for row in g.relevance[0][:, cols]],
                    "source_positions": cols.tolist()}
        run.write_summary(summary)
    finally:
        run.close()
    return AlignmentResult("alignment", records, summary, run.directory, params)
