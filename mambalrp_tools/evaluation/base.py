"""The loop every analysis shares: pending (sample, method) pairs -> records, with a progress bar."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from .common import MethodSpec, examples_fingerprint, model_fingerprint, parse_methods
from .runs import Run


@dataclass
class Result:
    """Records (one per sample and method), a summary, and the run folder (if any).

    `table()` gives the summary as rows (a pandas DataFrame with `as_frame=True`); `plot()` draws
    the analysis' figure and returns it.
    """

    analysis: str
    records: list[dict]
    summary: dict
    run_dir: Path | None = None
    params: dict = field(default_factory=dict)

    def table(self, as_frame: bool = False):
        rows = [{"method": m, **v} for m, v in self.summary.get("methods", {}).items()]
        if as_frame:
            import pandas as pd

            return pd.DataFrame(rows).set_index("method")
        return rows

    def plot(self, **kwargs):  # overridden per analysis
        raise NotImplementedError(f"{self.analysis} has no plot")

    def figures(self) -> dict:
        """name -> figure, for saving (CLI)."""
        return {self.analysis: self.plot()}

    def __repr__(self):
        lines = [f"<{type(self).__name__} {self.analysis}: {len(self.records)} records>"]
        for row in self.table():
            lines.append("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
        return "\n".join(lines)


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def open_run(analysis: str, model, examples, specs: list[MethodSpec], params: dict, out, overwrite: bool,
             info: dict | None = None, model_name: str | None = None) -> Run:
    identity = {
        "analysis": analysis,
        "model": model_fingerprint(model, model_name),
        "examples": None if examples is None else examples_fingerprint(examples),
        "methods": [s.describe() for s in specs],
        "params": params,
    }
    info = dict(info or {})
    if examples is not None:
        info.setdefault("n", len(examples))
    return Run(out, identity, overwrite=overwrite, info=info)


def prepare(methods):
    specs = parse_methods(methods)
    return specs


def run_per_method(run: Run, samples: list[tuple[Any, Any]], specs: list[MethodSpec],
                   compute: Callable[[list[tuple[Any, Any]], MethodSpec], list[dict]],
                   *, batch_size: int = 1, desc: str = "", progress: bool = True):
    """For each pending (sample, method): `compute(batch, spec)` -> one record per sample of `batch`.

    With batch_size > 1, samples of the same length are grouped (no padding, so batching cannot
    change a number); each record is written the moment its batch is done.
    """
    pending = run.pending([s for s, _ in samples], [s.label for s in specs])
    by_id = {_k(s): ex for s, ex in samples}
    bar = tqdm(total=len(samples) * len(specs), initial=len(samples) * len(specs) - len(pending),
               desc=desc, disable=not progress, unit="expl")
    try:
        for spec in specs:
            todo = [(s, by_id[_k(s)]) for s, m in pending if m == spec.label]
            for batch in _batches(todo, batch_size):
                for rec in compute(batch, spec):
                    rec = {"sample": rec.pop("sample"), "method": spec.label, **rec}
                    run.write(rec)
                    bar.update(1)
    finally:
        bar.close()


def run_per_sample(run: Run, samples: list[tuple[Any, Any]], specs: list[MethodSpec],
                   compute: Callable[[Any, Any, list[MethodSpec]], list[dict]], *, desc: str = "",
                   progress: bool = True):
    """For each sample with a pending method: `compute(sample, example, specs)` -> one record per spec
    (for analyses that share work across methods within a sample)."""
    labels = [s.label for s in specs]
    bar = tqdm(total=len(samples), desc=desc, disable=not progress, unit="sample")
    try:
        for sid, ex in samples:
            todo = [s for s in specs if not run.done(sid, s.label)]
            if todo:
                for rec in compute(sid, ex, todo):
                    assert rec["method"] in labels
                    run.write({"sample": sid, **rec})
            bar.update(1)
    finally:
        bar.close()


def _k(sample):
    import json

    return json.dumps(sample)


def _batches(items, batch_size: int):
    if batch_size <= 1:
        for it in items:
            yield [it]
        return
    groups: dict[int, list] = {}
    for it in items:
        groups.setdefault(int(it[1].input_ids.shape[-1]), []).append(it)
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            yield group[i: i + batch_size]


def stack_ids(batch) -> torch.Tensor:
    return torch.stack([ex.input_ids.long() for _, ex in batch])


def targets_for(model, batch, target: str, position: int = -1) -> torch.Tensor:
    """The explained class/token per sample: the example's `target` ("label") or the model's argmax ("pred")."""
    if target == "label":
        return torch.tensor([int(ex.target) for _, ex in batch])
    if target == "pred":
        from .common import output_logits

        return output_logits(model, stack_ids(batch), position=position).argmax(-1)
    raise ValueError(f"target must be 'label' or 'pred', got {target!r}")
