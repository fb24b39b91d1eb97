"""The engine every analysis runs on: run folder, resume, progress, the per-method loop, the summary.

An analysis supplies its science as two functions, `compute` (a batch of examples and one method ->
records) and `summarize` (records -> summary), and `run_analysis` does the rest the same way for all.
"""

from __future__ import annotations

import json
import math
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from .distributed import world as current_world
from .runs import FAILED_MARKER, SUMMARY, Run, RunIncomplete, examples_fingerprint, model_fingerprint, sample_key
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
    0 shows the progress bar (counting every rank's records, also while it waits for the others).

    When a rank fails (several processes):
    - a rank whose work raises an exception does not take the others down: it writes
      `failed.rank<R>.json` (exception, message, traceback, the samples and methods it was on), warns,
      and waits; the other ranks finish their shares. Rank 0 then merges every rank's records and,
      the run being incomplete, writes no summary; every rank raises: the failed one its own
      exception (with a note on the run's state), the others `runs.RunIncomplete` naming the failed
      rank(s), where they failed and how many (sample, method) records are missing. Running the same
      evaluation again (any number of processes) computes exactly the missing ones.
    - the end of the work is synchronised through marker files in the run folder, polled, not a
      collective barrier, so a rank may wait for the others for hours without a timeout.
    - a rank killed outright (SIGKILL, the out-of-memory killer) cannot report. Under torchrun /
      `accelerate launch` the launcher then stops the other ranks too; the records every rank wrote
      stay in its file (each record is fsynced as it is written), and a rerun with any number of
      processes completes exactly the missing ones. Without such a launcher, a rank on the same
      machine sees the killed rank has ended and stops waiting (rank 0 merges, every rank raises
      `RunIncomplete`); a rank on another machine waits until its launcher stops it.
    """
    specs = parse_methods(methods)
    samples = list(enumerate(examples)) if samples is None else samples
    world = current_world(getattr(model, "device", None))
    run = Run(out, {
        "analysis": analysis,
        "model": model_fingerprint(model, model_name),
        "examples": examples_fingerprint(examples if fingerprint is None else fingerprint),
        "methods": [s.describe() for s in specs],
        "params": params,
    }, overwrite=overwrite, info={"n": len(examples), **(info or {})}, world=world)
    bar = None
    try:
        ids, labels = [s for s, _ in samples], [s.label for s in specs]
        total = len(samples) * len(specs)
        bar = _Progress(run, total, total - len(run.pending(ids, labels)), analysis.replace("_", " "),
                        progress and world.main, "expl")
        loop = _per_sample if per_sample else _per_method
        at: dict = {}  # what this rank is working on, for the failure report
        if world.size == 1:  # an exception simply propagates: no other rank waits for this one
            loop(run, samples, specs, compute, batch_size=batch_size, bar=bar, at=at)
            run.gather()
            records = [r for r in run.records if r["method"] in labels]
            summary = summarize(records, specs)
            run.write_summary(summary)
        else:
            failure = None
            try:
                loop(run, samples, specs, compute, batch_size=batch_size, bar=bar, at=at)
            except Exception as err:  # noqa: BLE001 - reported, then raised again after the others finish
                failure = err
            records, summary = _end_of_work(run, world, bar, failure, at, ids, specs, summarize)
    finally:
        if bar is not None:
            bar.close()
        run.close()
    return result(analysis, records, summary, run.directory, params)


def _end_of_work(run: Run, world, bar, failure, at, ids, specs, summarize):
    """Several processes: every rank reports (done, or failed and on what), rank 0 waits for them all,
    merges and (complete runs only) summarises; the others wait for rank 0. No collective waits for
    a rank that is still working. Returns (records, summary) or raises (see `run_analysis`)."""
    labels = [s.label for s in specs]
    report = None if failure is None else _failure_report(failure, at)
    run.mark_done(report)
    if report is not None:
        warnings.warn(f"rank {world.rank} of {world.size} failed on {_where(report)} ({report['error']}: "
                      f"{report['message']}); the other ranks finish their shares, this one waits for them "
                      f"(details: {run.directory / FAILED_MARKER.format(world.rank)})", RuntimeWarning, stacklevel=3)
    summary, error = None, None
    if world.main:
        status, summary, error = _merge_on_rank0(run, world, bar, ids, specs, summarize)
        bar.show(status["total"] - status["missing"])
        run.write_merged(status)
    else:
        status = run.wait_merged()
        run.reload()
    settled = False
    if not status.get("ended"):  # every rank has read merged.json (they arrive within a poll of each other)
        try:
            world.barrier()
            settled = True
        except Exception:  # noqa: BLE001 - e.g. the failed rank's CUDA context is broken: the outcome stands
            pass
    if error is not None:
        raise error
    if status["complete"]:
        if world.main and settled:  # else they stay until the next run starts: harmless
            run.clear_markers()
        else:
            summary = json.loads((run.directory / SUMMARY).read_text())
        return [r for r in run.records if r["method"] in labels], summary
    message = _incomplete_message(run, status)
    if failure is not None:
        if hasattr(failure, "add_note"):  # Python >= 3.11
            failure.add_note(message)
        raise failure
    raise RunIncomplete(message, status)


def _merge_on_rank0(run: Run, world, bar, ids, specs, summarize):
    """Rank 0: wait for every rank, merge their records and summarise a complete run. Returns (the
    status for merged.json, the summary or None, the error to raise after the others are told, or None)."""
    labels = [s.label for s in specs]
    ended, summary, error = [], None, None
    try:
        ended = run.wait_for_ranks(bar.poll)
        run.merge()
    except Exception as err:  # noqa: BLE001 - the others are told, then it is raised
        error = err
    try:
        failed = run.failures()
    except Exception as err:  # noqa: BLE001 - an earlier error is the one to report
        failed, error = [], error or err
    status = {"world_size": world.size, "total": len(ids) * len(labels), "missing": len(run.pending(ids, labels)),
              "failed": failed, "ended": ended}
    status["complete"] = error is None and status["missing"] == 0 and not failed and not ended
    if status["complete"]:
        try:
            summary = summarize([r for r in run.records if r["method"] in labels], specs)
            run.write_summary(summary)
        except Exception as err:  # noqa: BLE001 - as above
            error, status["complete"] = err, False
    if error is not None:
        status["error"] = f"{type(error).__name__}: {error}"
    return status, summary, error


def _failure_report(err: BaseException, at: dict) -> dict:
    """What failed.rank<R>.json says: the exception and the samples and methods it happened on."""
    return {"error": type(err).__name__, "message": str(err), "samples": at.get("samples"),
            "methods": at.get("methods"), "traceback": "".join(traceback.format_exception(err))}


def _where(report: dict) -> str:
    samples, methods = report.get("samples") or [], report.get("methods") or []
    if not samples and not methods:
        return "no sample (before or after the work)"
    s = (f"sample {json.dumps(samples[0])}" if len(samples) == 1 else f"samples {json.dumps(samples)}")
    m = (f"method {methods[0]!r}" if len(methods) == 1 else f"methods {methods}")
    return f"{s}, {m}"


def _incomplete_message(run: Run, status: dict) -> str:
    reasons = [f"rank {f['rank']} failed on {_where(f)} ({f['error']}: {f['message']})" for f in status["failed"]]
    reasons += [f"rank {r} ended without reporting (killed?)" for r in status.get("ended", [])]
    if status.get("error"):
        reasons.append(f"rank 0 failed while merging or summarising ({status['error']})")
    return (f"the run in {run.directory} is incomplete: {'; '.join(reasons) or 'records are missing'}. "
            f"{status['missing']} of {status['total']} (sample, method) records are missing; the records "
            "written are kept: run the same command again to complete them (with any number of processes)")


def _per_method(run: Run, samples, specs, compute, *, batch_size, bar, at):
    """For each pending (sample, method), in method order: records written as their batch is done.

    With batch_size > 1, samples of the same length are grouped (no padding, so batching cannot
    change a number).
    """
    pending = run.pending([s for s, _ in samples], [s.label for s in specs])
    mine = pending[run.world.rank::run.world.size]  # the same list on every rank: disjoint shares
    by_id = {sample_key(s): ex for s, ex in samples}
    for spec in specs:
        todo = [(s, by_id[sample_key(s)]) for s, m in mine if m == spec.label]
        for batch in _batches(todo, batch_size):
            at.update(samples=[s for s, _ in batch], methods=[spec.label])
            for rec in compute(batch, spec):
                run.write({"sample": rec.pop("sample"), "method": spec.label, **rec})
                bar.update()
    at.clear()


def _per_sample(run: Run, samples, specs, compute, *, batch_size, bar, at):
    labels = [s.label for s in specs]
    pending = [(sid, ex) for sid, ex in samples if any(not run.done(sid, s.label) for s in specs)]
    mine = pending[run.world.rank::run.world.size]
    for sid, ex in mine:
        todo = [s for s in specs if not run.done(sid, s.label)]
        at.update(samples=[sid], methods=[s.label for s in todo])
        for rec in compute(sid, ex, todo):
            if rec["method"] not in labels:
                raise ValueError(f"compute returned a record for {rec['method']!r}, not one of {labels}")
            run.write({"sample": sid, **rec})
            bar.update()
    at.clear()


class _Progress:
    """A tqdm bar of records done; over several processes it counts every rank's records (rank 0's bar)."""

    def __init__(self, run: Run, total: int, initial: int, desc: str, show: bool, unit: str):
        self.run, self.last, self.initial = run, 0.0, initial
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=not show, unit=unit)
        # several processes: records written since the start = lines appended to the records files
        self.baseline = run.lines_written() if show and run.world.size > 1 else 0

    def update(self):
        if self.run.world.size == 1:
            self.bar.update(1)
        else:
            self.poll()

    def poll(self):
        """Show every rank's records (at most once a second; only the files' new lines are read)."""
        if self.run.world.size > 1 and not self.bar.disable and time.monotonic() - self.last > 1.0:
            self.last = time.monotonic()
            self.bar.n = min(self.bar.total, self.initial + self.run.lines_written() - self.baseline)
            self.bar.refresh()

    def show(self, n: int):
        if not self.bar.disable:
            self.bar.n = min(self.bar.total, n)
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
