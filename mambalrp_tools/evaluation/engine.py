"""The engine every analysis runs on: run folder, resume, progress, the per-method loop, the summary.

An analysis supplies its science as two functions, `compute` (a batch of examples and one method ->
records) and `summarize` (records -> summary), and `run_analysis` does the rest the same way for all.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from .distributed import world as current_world
from .runs import SUMMARY, Run, examples_fingerprint, model_fingerprint, sample_key
from .specs import MethodSpec, parse_methods


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

    def metrics(self) -> list[dict]:
        """The summary as long rows: method, metric, mean, se (nan when not computed), n."""
        out = []
        for method, row in self.summary.get("methods", {}).items():
            for key, value in row.items():
                if key == "n" or key.endswith("_se") or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                out.append({"method": method, "metric": key, "mean": float(value),
                            "se": float(row.get(key + "_se", math.nan)), "n": row.get("n")})
        return out

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


Compute = Callable[[list[tuple[Any, Any]], MethodSpec], list[dict]]
Summarize = Callable[[list[dict], list[MethodSpec]], dict]


def run_analysis(analysis: str, model, examples: Sequence, methods, compute: Compute, summarize: Summarize, *,
                 params: dict, result: type[Result] = Result, samples: list[tuple[Any, Any]] | None = None,
                 per_sample: bool = False, batch_size: int = 1, out=None, overwrite: bool = False,
                 progress: bool = True, model_name: str | None = None, info: dict | None = None,
                 fingerprint: Sequence | None = None) -> Result:
    """Run one analysis into its run folder `out` (resumed when it exists) and summarise it.

    samples: (sample id, example) pairs (default: `enumerate(examples)`); the id keys the records.
    compute(batch, spec) -> one record per sample of the batch (each with its `sample`). With
    per_sample=True it is compute(sample, example, specs) -> one record per spec (each with its
    `method`), for analyses that share work across methods within a sample.
    fingerprint: the examples that identify the run (default: `examples`).

    Under torchrun / `accelerate launch` (see `distributed`) the pending pairs are shared out by rank,
    each rank writes its own records file, and rank 0 merges them and writes the summary; only rank
    0 shows the progress bar (counting every rank's records).
    """
    specs = parse_methods(methods)
    samples = list(enumerate(examples)) if samples is None else samples
    world = current_world()
    run = Run(out, {
        "analysis": analysis,
        "model": model_fingerprint(model, model_name),
        "examples": examples_fingerprint(examples if fingerprint is None else fingerprint),
        "methods": [s.describe() for s in specs],
        "params": params,
    }, overwrite=overwrite, info={"n": len(examples), **(info or {})}, world=world)
    try:
        loop = _per_sample if per_sample else _per_method
        loop(run, samples, specs, compute, batch_size=batch_size, desc=analysis.replace("_", " "),
             progress=progress and world.main)
        run.gather()
        labels = {s.label for s in specs}
        records = [r for r in run.records if r["method"] in labels]
        if world.main:
            summary = summarize(records, specs)
            run.write_summary(summary)
        world.barrier()
        if not world.main:  # rank 0's summary: computed once
            summary = json.loads((run.directory / SUMMARY).read_text())
    finally:
        run.close()
    return result(analysis, records, summary, run.directory, params)


def _per_method(run: Run, samples, specs, compute, *, batch_size, desc, progress):
    """For each pending (sample, method), in method order: records written as their batch is done.

    With batch_size > 1, samples of the same length are grouped (no padding, so batching cannot
    change a number).
    """
    pending = run.pending([s for s, _ in samples], [s.label for s in specs])
    mine = pending[run.world.rank::run.world.size]  # the same list on every rank: disjoint shares
    by_id = {sample_key(s): ex for s, ex in samples}
    total = len(samples) * len(specs)
    bar = _Progress(run, total, total - len(pending), desc, progress, "expl")
    try:
        for spec in specs:
            todo = [(s, by_id[sample_key(s)]) for s, m in mine if m == spec.label]
            for batch in _batches(todo, batch_size):
                for rec in compute(batch, spec):
                    run.write({"sample": rec.pop("sample"), "method": spec.label, **rec})
                    bar.update()
    finally:
        bar.close()


def _per_sample(run: Run, samples, specs, compute, *, batch_size, desc, progress):
    labels = [s.label for s in specs]
    pending = [(sid, ex) for sid, ex in samples if any(not run.done(sid, s.label) for s in specs)]
    mine = pending[run.world.rank::run.world.size]
    total = len(samples) * len(specs)
    bar = _Progress(run, total, total - sum(not run.done(sid, s.label) for sid, _ in pending for s in specs),
                    desc, progress, "expl")
    try:
        for sid, ex in mine:
            todo = [s for s in specs if not run.done(sid, s.label)]
            for rec in compute(sid, ex, todo):
                if rec["method"] not in labels:
                    raise ValueError(f"compute returned a record for {rec['method']!r}, not one of {labels}")
                run.write({"sample": sid, **rec})
                bar.update()
    finally:
        bar.close()


class _Progress:
    """A tqdm bar of records done; over several processes it counts every rank's records (rank 0's bar)."""

    def __init__(self, run: Run, total: int, initial: int, desc: str, show: bool, unit: str):
        self.run, self.last = run, 0.0
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=not show, unit=unit)

    def update(self):
        if self.run.world.size == 1:
            self.bar.update(1)
        elif not self.bar.disable and time.monotonic() - self.last > 1.0:  # read the rank files once a second
            self.last = time.monotonic()
            self.bar.n = min(self.bar.total, self.run.records_on_disk())
            self.bar.refresh()

    def close(self):
        self.bar.close()


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
