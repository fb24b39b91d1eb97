"""Resumable evaluation runs: a folder with `manifest.json` and `records.jsonl`.

- One JSON line per (sample, method), written as soon as it is computed, flushed and fsynced,
  so a killed run loses at most what was in flight (one sample; one batch with batch_size > 1).
- Re-running the same evaluation on the same folder skips the finished (sample, method) pairs;
  existing records are never rewritten (the file is only appended to). A torn last line left by a
  kill is not a record and is cut off before appending.
- A folder whose manifest does not match the evaluation is refused unless `overwrite=True`;
  `overwrite=True` always starts the folder afresh (without it, a matching folder is resumed).
- An exclusive lock stops two evaluations from writing one run.
- Data-parallel (torchrun / accelerate launch, see `distributed`): rank 0 checks the folder and writes
  the manifest; each rank appends to its own `records.rank<R>.jsonl`, so no two writers share a file;
  `gather()` has rank 0 append the rank files' records to `records.jsonl` and delete the rank files.
  Records are keyed by (sample, method), never by rank, and every file is read on opening, so a run
  resumes with any number of processes.
- No pickle anywhere: JSON only.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Iterable

from .distributed import World

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
RANK_RECORDS = "records.rank{}.jsonl"
SUMMARY = "summary.json"
LOCK = ".lock"
#: manifest keys that must match for a folder to be resumed (the rest is information)
IDENTITY_KEYS = ("analysis", "model", "examples", "methods", "params")


class RunMismatch(ValueError):
    """The run folder belongs to a different evaluation."""


class RunLocked(RuntimeError):
    """Another process is writing this run folder."""


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("mambalrp_tools", "torch", "transformers", "captum", "scipy", "numpy"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # not installed, or not installed as a distribution
            versions[name] = None
    return versions


def canonical_json(value, **kwargs) -> str:
    """The one JSON text of a value: sorted keys, non-JSON values as their str()."""
    return json.dumps(value, sort_keys=True, default=str, **kwargs)


def canonical(value):
    """A value as it reads back from its canonical JSON (tuples become lists, keys sorted)."""
    return json.loads(canonical_json(value))


def sample_key(sample) -> str:
    """The key of a sample id (an int, or a list such as [context_length, depth, i]) in a run."""
    return json.dumps(sample)


def model_fingerprint(model, name: str | None = None) -> dict:
    """Name, class, size and a cheap content hash (a slice of every tensor) of a model."""
    h = hashlib.sha256()
    n = 0
    for key, tensor in sorted(model.state_dict().items()):
        n += tensor.numel()
        h.update(key.encode())
        h.update(tensor.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    config = getattr(model, "config", None)
    return {
        "name": name or getattr(config, "_name_or_path", None) or type(model).__name__,
        "class": type(model).__name__,
        "n_parameters": n,
        "sha256_sample": h.hexdigest()[:16],
    }


def examples_fingerprint(examples) -> str:
    """sha256 over every example's token ids, target and evidence: identifies a task draw."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.input_ids.tolist(), int(ex.target), ex.evidence.tolist(),
                             None if ex.candidates is None else ex.candidates.tolist()]).encode())
    return h.hexdigest()[:16]


class Run:
    """A run folder. `Run(None, ...)` keeps the records in memory only (no resume)."""

    def __init__(self, directory, identity: dict, overwrite: bool = False, info: dict | None = None,
                 world: World | None = None):
        self.world = world or World()
        self.directory = None if directory is None else Path(directory)
        self.identity = canonical({k: identity.get(k) for k in IDENTITY_KEYS} | {
            k: v for k, v in identity.items() if k not in IDENTITY_KEYS})
        self.records: list[dict] = []
        self._done: set[tuple[str, str]] = set()
        self._fh = None
        self._lock = None
        if self.directory is None:
            if self.world.size > 1:
                raise ValueError("an evaluation over several processes needs a run folder (out=) they share")
            return
        self._open(overwrite, info or {})

    @property
    def records_path(self) -> Path:
        """The file this process appends to."""
        name = RECORDS if self.world.size == 1 else RANK_RECORDS.format(self.world.rank)
        return self.directory / name

    # ------------------------------------------------------------------ opening
    def _open(self, overwrite: bool, info: dict):
        try:
            self._join(overwrite, info)
        except BaseException:
            self.close()  # no lock file left behind, whatever interrupted the opening
            raise

    def _join(self, overwrite: bool, info: dict):
        error = None
        if self.world.main:
            try:
                self._prepare(overwrite, info)
            except (RunMismatch, RunLocked) as err:
                error = err
        if self.world.size > 1:  # the other ranks learn rank 0's verdict instead of waiting forever
            import torch.distributed as dist

            box = [None if error is None else (type(error).__name__, str(error))]
            dist.broadcast_object_list(box, src=0)
            if box[0] is not None and error is None:
                error = (RunLocked if box[0][0] == "RunLocked" else RunMismatch)(box[0][1])
        if error is not None:
            raise error
        self._load_records()
        self.world.barrier()  # every rank has read the same records before any rank appends
        self._fh = open(self.records_path, "a", encoding="utf-8")

    def _prepare(self, overwrite: bool, info: dict):
        d = self.directory
        manifest_path = d / MANIFEST
        if d.exists() and not d.is_dir():
            raise RunMismatch(f"{d} exists and is not a folder")
        if d.is_dir() and any(d.iterdir()):
            if manifest_path.is_file():
                try:
                    existing = json.loads(manifest_path.read_text())
                except json.JSONDecodeError:
                    existing = None
                mismatch = self._mismatch(existing)
            else:
                mismatch = [f"{d} is not empty and has no {MANIFEST}"]
            if mismatch or overwrite:
                if not overwrite:
                    raise RunMismatch(
                        f"run folder {d} belongs to a different evaluation ({'; '.join(mismatch)}). "
                        "Use another folder, or pass overwrite=True (CLI: --overwrite) to start it afresh."
                    )
                self._acquire_lock(d)
                for child in d.iterdir():
                    if child.name == LOCK:
                        continue
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        d.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._acquire_lock(d)
        if not manifest_path.is_file():
            manifest = dict(self.identity)
            manifest.update(canonical(info))
            manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            manifest["versions"] = package_versions()
            tmp = manifest_path.with_suffix(".tmp")
            tmp.write_text(canonical_json(manifest, indent=2))
            os.replace(tmp, manifest_path)  # atomic: never a half-written manifest

    def _mismatch(self, existing) -> list[str]:
        if not isinstance(existing, dict):
            return [f"unreadable {MANIFEST}"]
        diffs = []
        for key in self.identity:
            if key in ("created", "versions"):
                continue
            if canonical(existing.get(key)) != self.identity[key]:
                diffs.append(f"{key}: folder has {_short(existing.get(key))}, this run has {_short(self.identity[key])}")
        return diffs

    def _acquire_lock(self, d: Path):
        import fcntl

        d.mkdir(parents=True, exist_ok=True)
        while True:
            fh = open(d / LOCK, "a")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                fh.close()
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunLocked(f"another process is writing the run in {d}") from None
                raise
            # the holder before us deletes the lock file on close: a lock on a deleted file is no lock
            try:
                same = os.stat(d / LOCK).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        self._lock = fh

    def _record_files(self) -> list[Path]:
        return [self.directory / RECORDS, *sorted(self.directory.glob(RANK_RECORDS.format("*")))]

    def _load_records(self):
        own = self.records_path
        if own.exists():
            with open(own, "rb+") as fh:
                data = fh.read()
                keep = data.rfind(b"\n") + 1
                if keep < len(data):
                    # a torn line from a kill mid-write: not a record; cut it so appends stay line-aligned
                    fh.truncate(keep)
                    fh.flush()
                    os.fsync(fh.fileno())
        self.records, self._done = [], set()
        for path in self._record_files():
            for rec in _complete_records(path):  # another rank's torn line is not a record either
                key = self.key(rec["sample"], rec["method"])
                if key not in self._done:  # a rank file merged but not yet deleted when a run was killed
                    self.records.append(rec)
                    self._done.add(key)

    # ------------------------------------------------------------------ use
    @staticmethod
    def key(sample, method) -> tuple[str, str]:
        return (sample_key(sample), str(method))

    def done(self, sample, method) -> bool:
        return self.key(sample, method) in self._done

    def pending(self, samples: Iterable, methods: Iterable[str]) -> list[tuple[Any, str]]:
        return [(s, m) for s in samples for m in methods if not self.done(s, m)]

    def write(self, record: dict):
        """Append one record (must carry `sample` and `method`); durable when this returns."""
        if "sample" not in record or "method" not in record:
            raise ValueError("a record needs `sample` and `method` fields")
        key = self.key(record["sample"], record["method"])
        if key in self._done:
            raise ValueError(f"record {key} exists already; records are never rewritten")
        line = canonical_json(record)
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        self.records.append(json.loads(line))
        self._done.add(key)

    def records_on_disk(self) -> int:
        """Complete records in all of the run's files (rank 0's progress bar counts every rank's)."""
        if self.directory is None:
            return len(self.records)
        return sum(len(_complete_records(p)) for p in self._record_files())

    def gather(self):
        """After the loop: every rank has finished; rank 0 appends the rank files' records to
        records.jsonl (existing lines untouched) and deletes the rank files; every rank then holds all
        records. One process: the records of an earlier multi-process attempt are merged the same way."""
        if self.directory is None:
            return
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.world.barrier()
        if self.world.main:
            main_path = self.directory / RECORDS
            have = {self.key(r["sample"], r["method"]) for r in _complete_records(main_path)}
            rank_files = [p for p in self._record_files() if p != main_path]
            with open(main_path, "a", encoding="utf-8") as fh:
                for path in rank_files:
                    for rec in _complete_records(path):
                        key = self.key(rec["sample"], rec["method"])
                        if key not in have:
                            fh.write(canonical_json(rec) + "\n")
                            have.add(key)
                fh.flush()
                os.fsync(fh.fileno())
            for path in rank_files:  # only once their records are durable in records.jsonl
                path.unlink()
        self.world.barrier()
        self.records = _complete_records(self.directory / RECORDS)
        self._done = {self.key(r["sample"], r["method"]) for r in self.records}

    def write_summary(self, summary) -> Path | None:
        """`summary.json`: derived from the records, so it is rewritten on every completion."""
        if self.directory is None or not self.world.main:
            return None
        path = self.directory / SUMMARY
        tmp = path.with_suffix(".tmp")
        tmp.write_text(canonical_json(summary, indent=2))
        os.replace(tmp, path)
        return path

    def close(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock is not None:  # rank 0's
            try:
                (self.directory / LOCK).unlink()  # while still holding it (see _acquire_lock)
            except FileNotFoundError:
                pass
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _short(value, limit: int = 120) -> str:
    text = canonical_json(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _complete_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n") and line.strip():
                out.append(json.loads(line))
    return out


def read_records(directory) -> list[dict]:
    """All complete records of a run folder (a torn last line is ignored), also those of ranks not
    merged yet, each (sample, method) once."""
    d = Path(directory)
    out, seen = [], set()
    for path in [d / RECORDS, *sorted(d.glob(RANK_RECORDS.format("*")))]:
        for rec in _complete_records(path):
            key = Run.key(rec["sample"], rec["method"])
            if key not in seen:
                seen.add(key)
                out.append(rec)
    return out
