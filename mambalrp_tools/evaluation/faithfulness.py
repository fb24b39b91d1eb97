"""Faithfulness by input perturbation (paper Table 1) and the rule ablation (Table 2).

Tokens are ordered by relevance. MoRF removes the most relevant first, LeRF the least relevant
first; after each step the explained output f (the target logit at the explained position) is read.
x = fraction of tokens removed (0..1), A = trapezoid area under f(x), and
    delta_AF = A_LeRF - A_MoRF            (higher is better)
The insertion variant starts from the fully replaced input and puts tokens back, most relevant first
(ins_MoRF) or least relevant first (ins_LeRF); delta_ins = A_insMoRF - A_insLeRF (higher is better).
With a replacement token the inputs of ins_MoRF at x are those of LeRF at 1 - x (keep the top k =
remove the bottom T - k), so the insertion numbers mirror the deletion ones; each distinct input is
run once. Ties in relevance keep token order (stable sort), so a reversed explanation gives exactly
minus the delta of the original.

Replacement of a removed token: "unk" / "pad" (that token id, from the tokenizer or the config),
an int token id, "zero" (a zero input embedding), or "delete" (the token is dropped; the empty
input is represented by a single pad token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..tasks.padding import left_pad, pad_id
from .engine import Result, run_analysis
from .forward import device_of, logits_at, relevance, select, targets_for
from .runs import sample_key
from .stats import mean_se

DEFAULT_STEPS = 20


# ---------------------------------------------------------------- metric core (model-free)


def step_counts(n_tokens: int, steps: int) -> list[int]:
    """How many tokens are removed at each step: `steps` + 1 points from 0 to all, no repeats."""
    ks = np.round(np.linspace(0, n_tokens, min(steps, n_tokens) + 1)).astype(int)
    return sorted(set(ks.tolist()))


def orders(rel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MoRF, LeRF) orders of positions: descending / ascending relevance, ties in token order."""
    rel = rel.double()
    morf = torch.sort(-rel, stable=True).indices
    lerf = torch.sort(rel, stable=True).indices
    return morf, lerf


def curve_masks(rel: torch.Tensor, steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """x values and, per curve, keep-masks [n_steps, T] (True = the token is present)."""
    T = rel.shape[0]
    ks = step_counts(T, steps)
    morf, lerf = orders(rel)
    masks = {}
    for name, order, insert in (("morf", morf, False), ("lerf", lerf, False),
                                ("ins_morf", morf, True), ("ins_lerf", lerf, True)):
        m = torch.zeros(len(ks), T, dtype=torch.bool) if insert else torch.ones(len(ks), T, dtype=torch.bool)
        for i, k in enumerate(ks):
            m[i, order[:k]] = insert
        masks[name] = m
    return [k / T for k in ks], masks


def area(x, y) -> float:
    """Trapezoid area under y(x)."""
    return float(np.trapezoid(np.asarray(y, float), np.asarray(x, float)))


def curves_from_scores(x, scores: dict[str, list[float]]) -> dict:
    out = {"x": list(x), **{k: list(v) for k, v in scores.items()}}
    out.update({f"A_{k}": area(x, v) for k, v in scores.items()})
    out["delta_af"] = out["A_lerf"] - out["A_morf"]
    if "ins_morf" in scores:
        out["delta_ins"] = out["A_ins_morf"] - out["A_ins_lerf"]
    return out


def perturbation_curves(score, rel: torch.Tensor, steps: int = DEFAULT_STEPS) -> dict:
    """All four curves for one sample. `score(keep_masks [N, T] bool) -> f [N]` runs the model.

    Distinct masks are scored once (insertion and deletion share most of their inputs).
    """
    x, masks = curve_masks(rel, steps)
    allm = torch.cat(list(masks.values()))
    uniq, inverse = torch.unique(allm, dim=0, return_inverse=True)
    f = torch.as_tensor(score(uniq)).double().flatten()
    values = f[inverse]
    scores, i = {}, 0
    for name, m in masks.items():
        scores[name] = values[i: i + m.shape[0]].tolist()
        i += m.shape[0]
    return curves_from_scores(x, scores)


# ---------------------------------------------------------------- model side


def replacement_id(model, tokenizer, replacement):
    """The token id that stands in for a removed token (None for "zero" and "delete")."""
    if replacement in ("zero", "delete"):
        return None
    if isinstance(replacement, int) and not isinstance(replacement, bool):
        return replacement
    if replacement == "pad":
        return pad_id(tokenizer, getattr(model, "config", None))
    if replacement != "unk":
        raise ValueError(f"replacement must be 'unk', 'pad', 'zero', 'delete' or a token id, got {replacement!r}")
    for source in (tokenizer, getattr(model, "config", None)):
        tid = getattr(source, "unk_token_id", None) if source is not None else None
        if tid is not None:
            return int(tid)
    raise ValueError("no unk token known (pass tokenizer=, whose unk_token_id is set, or use "
                     "replacement='pad' / 'zero' / 'delete' / a token id)")


class Scorer:
    """f (target logit, minus the contrast logit if any) of one sample under keep-masks."""

    def __init__(self, model, input_ids, target, replacement, rid, position=-1, contrast=None,
                 pad_id=0, batch_size=64):
        self.model, self.ids = model, input_ids.long().cpu()
        self.target, self.contrast = int(target), None if contrast is None else int(contrast)
        self.replacement, self.rid, self.position = replacement, rid, position
        self.pad_id, self.batch_size = pad_id, batch_size

    @torch.no_grad()
    def __call__(self, keep: torch.Tensor) -> torch.Tensor:
        out = [self._score(keep[i: i + self.batch_size]) for i in range(0, keep.shape[0], self.batch_size)]
        return torch.cat(out)

    def _score(self, keep):
        n = keep.shape[0]
        tgt = torch.full((n,), self.target)
        con = None if self.contrast is None else torch.full((n,), self.contrast)
        model = self.model
        if self.replacement == "zero":
            emb = model.get_input_embeddings()(self.ids.to(device_of(model)))
            embeds = emb[None].expand(n, -1, -1) * keep[..., None].to(emb.device, emb.dtype)
            logits = logits_at(model, None, self.position, inputs_embeds=embeds)
        elif self.replacement == "delete":
            ids, mask = left_pad([self.ids[keep[i]] for i in range(n)], self.pad_id)
            logits = logits_at(model, ids, self.position, mask)
        else:
            logits = logits_at(model, torch.where(keep, self.ids[None], torch.tensor(self.rid)), self.position)
        return select(logits, tgt, con)


@dataclass(repr=False)
class FaithfulnessResult(Result):
    def plot(self, insertion: bool = True, grid: int = 51):
        """Mean f over samples against the fraction removed (inserted), per method."""
        import matplotlib.pyplot as plt

        panels = [("deletion", ("morf", "lerf"))] + ([("insertion", ("ins_morf", "ins_lerf"))] if insertion else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
        xs = np.linspace(0, 1, grid)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, (title, keys) in zip(axes[0], panels):
            for j, method in enumerate(self.summary["methods"]):
                recs = [r for r in self.records if r["method"] == method]
                for key, style in zip(keys, ("-", "--")):
                    ys = np.mean([np.interp(xs, r["x"], r[key]) for r in recs], axis=0)
                    ax.plot(xs, ys, style, color=colors[j % len(colors)],
                            label=f"{method} {key.split('_')[-1].upper()}")
            ax.set_xlabel(f"fraction of tokens {'removed' if title == 'deletion' else 'inserted'}")
            ax.set_ylabel("target logit")
            ax.set_title(title)
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        return fig


def summarize(records, labels) -> dict:
    methods = {}
    for label in labels:
        recs = [r for r in records if r["method"] == label]
        row = {}
        for key in ("delta_af", "A_morf", "A_lerf", "delta_ins", "A_ins_morf", "A_ins_lerf"):
            m, se, n = mean_se(r[key] for r in recs)
            row[key] = m
            row[key + "_se"] = se
        row["n"] = len(recs)
        methods[label] = row
    ranking = sorted(methods, key=lambda k: -np.nan_to_num(methods[k]["delta_af"], nan=-np.inf))
    return {"methods": methods, "ranking_delta_af": ranking,
            "paired_vs_first": paired_differences(records, labels[0], labels[1:]) if labels else {}}


def paired_differences(records, reference: str, others, key: str = "delta_af") -> dict:
    """Per other method: mean over shared samples of key(reference) - key(other), its standard error
    and a two-sided Wilcoxon signed-rank p-value. Paired, so much tighter than comparing two means."""
    from scipy import stats

    ref = {sample_key(r["sample"]): r[key] for r in records if r["method"] == reference}
    out = {}
    for other in others:
        pairs = [(ref[sample_key(r["sample"])], r[key]) for r in records
                 if r["method"] == other and sample_key(r["sample"]) in ref]
        diffs = [a - b for a, b in pairs]
        mean, se, n = mean_se(diffs)
        p = float(stats.wilcoxon(diffs).pvalue) if n > 1 and any(d != 0 for d in diffs) else float("nan")
        out[other] = {f"{key}_diff": mean, "se": se, "n": n, "wilcoxon_p": p}
    return out


def faithfulness(model, examples, methods=("mambalrp", "gradient_x_input", "random"), *, replacement="unk",
                 steps: int = DEFAULT_STEPS, target: str = "pred", tokenizer=None, position: int = -1,
                 batch_size: int = 1, score_batch_size: int = 64, out=None, overwrite: bool = False,
                 progress: bool = True, model_name: str | None = None, info: dict | None = None
                 ) -> FaithfulnessResult:
    """MoRF / LeRF deletion and insertion curves per sample and method; mean +- s.e. of delta_AF.

    examples: `tasks.Example`s. methods: names, `"mambalrp:-ssm"`, `("mambalrp", {"ssm": False})`
    or callables (see `evaluation.specs`). target: explain and track the model's prediction ("pred")
    or the example's label ("label"). out: a run folder (resumable; see `evaluation.runs`).
    """
    rid = replacement_id(model, tokenizer, replacement)
    pad = rid if rid is not None else pad_id(tokenizer, getattr(model, "config", None))
    params = {"replacement": replacement, "replacement_id": rid, "steps": steps, "target": target,
              "position": position}

    def compute(batch, spec):
        ids = torch.stack([ex.input_ids.long() for _, ex in batch])
        tgt = targets_for(model, batch, target, position)
        rel, f, tgt = relevance(model, spec, ids, tgt, position=position, sample=batch[0][0])
        recs = []
        for i, (sid, ex) in enumerate(batch):
            scorer = Scorer(model, ex.input_ids, tgt[i], replacement, rid, position, pad_id=pad,
                            batch_size=score_batch_size)
            c = perturbation_curves(scorer, rel[i], steps)
            recs.append({"sample": sid, "target": int(tgt[i]), "label": int(ex.target),
                         "f": float(f[i]), "n_tokens": int(ex.input_ids.shape[-1]), **c})
        return recs

    return run_analysis("faithfulness", model, examples, methods, compute,
                        lambda records, specs: summarize(records, [s.label for s in specs]), params=params,
                        result=FaithfulnessResult, batch_size=batch_size, out=out, overwrite=overwrite,
                        progress=progress, model_name=model_name, info=info)
