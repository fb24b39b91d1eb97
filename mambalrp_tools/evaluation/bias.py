"""Gender bias of an occupation classifier (Bias in Bios style), with relevance and counterfactuals.

- Per class (the explained label) and gender: the relevance of the gendered words (`Example.evidence`).
- Per class: the k tokens with the highest mean relevance (tokens seen at least `min_count` times).
- Counterfactual: swap the gendered words (`tasks.swap_gender`) and read the probability of the
  label class before and after. Two paired tests (scipy, two-sided):
  * `swap`: Wilcoxon signed-rank on p(original) vs p(swapped);
  * `stereotype`: for each pair, p(version whose gender is the occupation's majority gender in these
    examples) - p(the other version); Wilcoxon signed-rank against 0 (and a paired t-test).
  A model without a gender shortcut gives differences centred at 0.
"""

from __future__ import annotations

import inspect
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from .engine import Result, run_analysis
from .forward import logits_at, relevance
from .stats import mean_se


def _swap_fn(swap, tokenizer):
    if swap is not None:
        return swap
    from .. import tasks

    fn = tasks.swap_gender
    if tokenizer is not None and "tokenizer" in inspect.signature(fn).parameters:
        return lambda ex: fn(ex, tokenizer=tokenizer)
    return fn


def paired_tests(a, b) -> dict:
    """Wilcoxon signed-rank and paired t-test of a vs b (two-sided); nan where undefined."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"n": int(len(a)), "mean_diff": float(np.mean(a - b)) if len(a) else float("nan")}
    if len(a) < 2 or np.allclose(a, b):
        return {**out, "wilcoxon_p": float("nan"), "ttest_p": float("nan")}
    out["wilcoxon_p"] = float(stats.wilcoxon(a, b).pvalue)
    out["ttest_p"] = float(stats.ttest_rel(a, b).pvalue)
    return out


@dataclass(repr=False)
class BiasResult(Result):
    def table(self, as_frame: bool = False):
        rows = [{"class": c, "gender": g, **v} for c, by_g in self.summary["gendered_relevance"].items()
                for g, v in by_g.items()]
        if as_frame:
            import pandas as pd

            return pd.DataFrame(rows)
        return rows

    def plot(self):
        """Left: mean relevance of gendered words per class and gender. Right: p(label) before vs
        after the gender swap."""
        import matplotlib.pyplot as plt

        rel = self.summary["gendered_relevance"]
        classes = list(rel)
        genders = sorted({g for v in rel.values() for g in v})
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        x = np.arange(len(classes))
        w = 0.8 / max(1, len(genders))
        for k, g in enumerate(genders):
            axes[0].bar(x + (k - (len(genders) - 1) / 2) * w, [rel[c].get(g, {}).get("mean", np.nan) for c in classes],
                        w, yerr=[rel[c].get(g, {}).get("se", np.nan) for c in classes], label=g)
        axes[0].axhline(0, color="black", lw=0.6)
        axes[0].set_xticks(x, classes, rotation=30, ha="right")
        axes[0].set_ylabel("relevance of gendered words")
        axes[0].legend(fontsize=8)
        recs = [r for r in self.records if r["method"] == next(iter(self.summary["methods"]))]
        axes[1].scatter([r["p_orig"] for r in recs], [r["p_swap"] for r in recs], s=9, alpha=0.6)
        axes[1].plot([0, 1], [0, 1], color="0.6", lw=0.8)
        cf = self.summary["counterfactual"]
        axes[1].set_title(f"swap: Wilcoxon p = {cf['swap']['wilcoxon_p']:.2g}, "
                          f"flip rate {cf['flip_rate']:.2f}", fontsize=9)
        axes[1].set_xlabel("p(label), original")
        axes[1].set_ylabel("p(label), gender swapped")
        fig.tight_layout()
        return fig


def gender_bias(model, examples, methods=("mambalrp",), *, top_k: int = 10, min_count: int = 3, tokenizer=None,
                swap=None, class_names=None, batch_size: int = 1, out=None, overwrite: bool = False,
                progress: bool = True, model_name: str | None = None, info: dict | None = None) -> BiasResult:
    """Per-class relevance of gendered words, top-k tokens per class, and the counterfactual swap test.

    examples: bios examples (`meta["gender"]`, evidence = gendered words). swap: `fn(example) ->
    example` (default `tasks.swap_gender`). class_names: label index -> name (default
    `meta["occupation"]`).
    """
    swap_fn = _swap_fn(swap, tokenizer)
    examples = list(examples)
    swapped = [swap_fn(ex) for ex in examples]
    by_id = dict(enumerate(swapped))

    def compute(batch, spec):
        recs = []
        for sid, ex in batch:
            ids = ex.input_ids.long()[None]
            tgt = torch.tensor([int(ex.target)])
            p = logits_at(model, ids).softmax(-1)[0]
            sw = by_id[sid]
            p_sw = logits_at(model, sw.input_ids.long()[None]).softmax(-1)[0]
            rel, f, _ = relevance(model, spec, ids, tgt, sample=sid)
            r = rel[0]
            ev = ex.evidence.long()
            recs.append({
                "sample": sid, "label": int(ex.target), "gender": (ex.meta or {}).get("gender"),
                "occupation": (ex.meta or {}).get("occupation"),
                "pred": int(p.argmax()), "pred_swap": int(p_sw.argmax()),
                "p_orig": float(p[ex.target]), "p_swap": float(p_sw[ex.target]), "f": float(f[0]),
                "gendered_relevance": float(r[ev].sum()) if ev.numel() else 0.0,
                "gendered_share": float(r[ev].abs().sum() / r.abs().sum().clamp(min=1e-12)) if ev.numel() else 0.0,
                "token_ids": ex.input_ids.tolist(), "relevance": [round(float(v), 6) for v in r],
            })
        return recs

    def summarize(records, specs):
        return _summarize(records, [s.label for s in specs], examples, tokenizer, class_names, top_k, min_count)

    # the swap may change the length: one sample at a time
    return run_analysis("bias", model, examples, methods, compute, summarize,
                        params={"top_k": top_k, "min_count": min_count}, result=BiasResult,
                        fingerprint=examples + swapped, batch_size=1, out=out, overwrite=overwrite,
                        progress=progress, model_name=model_name, info=info)


def _name(label, occupation, class_names):
    if class_names is not None:
        return str(class_names[label])
    return str(occupation if occupation is not None else label)


def _summarize(records, labels, examples, tokenizer, class_names, top_k, min_count) -> dict:
    first = labels[0]
    recs = [r for r in records if r["method"] == first]
    # majority gender per class, from the examples themselves
    counts = defaultdict(Counter)
    for ex in examples:
        counts[int(ex.target)][(ex.meta or {}).get("gender")] += 1
    majority = {c: cnt.most_common(1)[0][0] for c, cnt in counts.items()}
    names = {int(ex.target): _name(int(ex.target), (ex.meta or {}).get("occupation"), class_names) for ex in examples}
    maj_p, min_p = [], []
    for r in recs:
        if r["gender"] == majority.get(r["label"]):
            maj_p.append(r["p_orig"]); min_p.append(r["p_swap"])
        else:
            maj_p.append(r["p_swap"]); min_p.append(r["p_orig"])
    counterfactual = {
        "swap": paired_tests([r["p_orig"] for r in recs], [r["p_swap"] for r in recs]),
        "stereotype": paired_tests(maj_p, min_p),
        "flip_rate": mean_se(float(r["pred"] != r["pred_swap"]) for r in recs)[0],
        "majority_gender": {names[c]: g for c, g in sorted(majority.items())},
    }
    gendered, top, methods = {}, {}, {}
    for label in labels:
        mrecs = [r for r in records if r["method"] == label]
        per = defaultdict(lambda: defaultdict(list))
        tok_rel = defaultdict(lambda: defaultdict(list))
        for r in mrecs:
            cname = _name(r["label"], r.get("occupation"), class_names)
            per[cname][str(r["gender"])].append(r["gendered_relevance"])
            for t, v in zip(r["token_ids"], r["relevance"]):
                tok_rel[cname][t].append(v)
        if label == first:
            gendered = {c: {g: dict(zip(("mean", "se", "n"), mean_se(v))) for g, v in sorted(by_g.items())}
                        for c, by_g in sorted(per.items())}
        top[label] = {}
        for cname, toks in sorted(tok_rel.items()):
            means = [(t, float(np.mean(v)), len(v)) for t, v in toks.items() if len(v) >= min_count]
            means.sort(key=lambda x: -x[1])
            top[label][cname] = [{"token": _tok(t, tokenizer), "mean_relevance": m, "count": n}
                                 for t, m, n in means[:top_k]]
        methods[label] = {"gendered_relevance": mean_se(r["gendered_relevance"] for r in mrecs)[0],
                          "gendered_share": mean_se(r["gendered_share"] for r in mrecs)[0], "n": len(mrecs)}
    return {"methods": methods, "gendered_relevance": gendered, "top_tokens": top, "counterfactual": counterfactual}


def _tok(t, tokenizer):
    if tokenizer is None:
        return str(t)
    return tokenizer.convert_ids_to_tokens([int(t)])[0]
