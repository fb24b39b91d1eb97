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
- The end of the work is synchronised through marker files, not a collective barrier (whose timeout
  a rank that finishes hours before the others would hit): each rank writes `done.rank<R>.json` when
  it has finished or given up (`failed.rank<R>.json` before it, saying on what it failed); rank 0
  waits for every rank's marker, merges, and writes `merged.json` (complete or not, what is missing),
  which the other ranks wait for. Rank 0 clears the markers of an earlier attempt when it opens the
  folder, before any rank starts; after a complete run it removes them.
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
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from .distributed import World

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
RANK_RECORDS = "records.rank{}.jsonl"
SUMMARY = "summary.json"
LOCK = ".lock"
DONE_MARKER = "done.rank{}.json"
FAILED_MARKER = "failed.rank{}.json"
MERGED_MARKER = "merged.json"
#: manifest keys that must match for a folder to be resumed (the rest is information)
IDENTITY_KEYS = ("analysis", "model", "examples", "methods", "params")


class RunMismatch(ValueError):
    """The run folder belongs to a different evaluation."""


class RunLocked(RuntimeError):
    """Another process is writing this run folder."""


class RunIncomplete(RuntimeError):
    """A data-parallel run ended with (sample, method) records missing: a rank failed or was killed.

    The records written are kept; running the same evaluation on the folder again computes only the
    missing ones. `status` is the content of the folder's `merged.json`.
    """

    def __init__(self, message: str, status: dict | None = None):
        super().__init__(message)
        self.status = status or {}


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
        self.peers: list[dict | None] = []  # per rank: _process_id(), gathered when the run opens
        self._lines: dict[Path, tuple[int, int]] = {}  # lines_written: per file, (bytes read, lines)
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
            except Exception as err:  # noqa: BLE001 - broadcast below, then raised on every rank
                error = err
        if self.world.size > 1:  # the other ranks learn rank 0's verdict instead of waiting forever
            import torch.distributed as dist

            box = [None if error is None else (type(error).__name__, str(error))]
            dist.broadcast_object_list(box, src=0)
            if box[0] is not None and error is None:
                kind = {"RunLocked": RunLocked, "RunMismatch": RunMismatch}.get(box[0][0])
                error = kind(box[0][1]) if kind else RuntimeError(
                    f"rank 0 could not open the run folder {self.directory}: {box[0][0]}: {box[0][1]}")
        if error is not None:
            raise error
        if self.world.size > 1:  # who the others are: a rank killed outright is then seen to have ended
            peers = [None] * self.world.size
            dist.all_gather_object(peers, _process_id())
            self.peers = peers
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
        _clear_markers(d)  # an earlier attempt's: before any rank of this one can write or read one
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

    def lines_written(self) -> int:
        """Complete lines in all of the run's records files, reading only what was appended since the
        last call (a progress bar may ask once a second for hours)."""
        if self.directory is None:
            return len(self.records)
        total = 0
        for path in self._record_files():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            offset, count = self._lines.get(path, (0, 0))
            if size < offset:  # a new file under this name
                offset, count = 0, 0
            if size > offset:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(size - offset)
                count += data.count(b"\n")
                offset += data.rfind(b"\n") + 1  # a line still being written is read again next time
            self._lines[path] = (offset, count)
            total += count
        return total

    def close_records(self):
        """This process appends no more records."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def gather(self):
        """After the work, once no rank writes any more: rank 0 appends the rank files' records to
        records.jsonl (existing lines untouched) and deletes the rank files (one process: those of an
        earlier multi-process attempt). Several processes: call `merge` on rank 0 once every rank is
        done (`wait_for_ranks`), and `reload` on the others once `merged.json` is there."""
        if self.directory is None:
            return
        self.close_records()
        if self.world.main:
            self.merge()
        else:
            self.reload()

    def merge(self):
        """Rank 0: append the rank files' records to records.jsonl (existing lines untouched), then
        delete the rank files. Only while no rank writes (a dead rank's torn last line is dropped)."""
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
        self.reload()

    def reload(self):
        """Read the merged records (records.jsonl) again."""
        self.records = _complete_records(self.directory / RECORDS)
        self._done = {self.key(r["sample"], r["method"]) for r in self.records}

    # ------------------------------------------------------------------ end of work, several processes
    def mark_done(self, failure: dict | None = None):
        """This rank has finished its share, or given up on it (`failure`: on what and why, JSON).
        Closes its records file first, so rank 0 reads every record it wrote."""
        self.close_records()
        rank = self.world.rank
        if failure is not None:
            self._write_marker(FAILED_MARKER.format(rank), {
                "rank": rank, "world_size": self.world.size, "host": socket.gethostname(), "pid": os.getpid(),
                **failure, "time": _now()})
        self._write_marker(DONE_MARKER.format(rank), {"rank": rank, "failed": failure is not None, "time": _now()})

    def wait_for_ranks(self, tick: Callable[[], Any] | None = None) -> list[int]:
        """Rank 0: wait (polling the folder, no collective, so no timeout) until every rank has written
        its done marker, or is seen to have ended without one (killed outright; seen only for ranks on
        this machine). Returns those ranks. `tick` is called while waiting (the progress bar)."""
        waiting, ended = set(range(self.world.size)), []
        for _ in _polls(tick):
            for r in sorted(waiting):
                if (self.directory / DONE_MARKER.format(r)).exists():
                    waiting.discard(r)
                elif r != self.world.rank and _ended(self.peers[r] if r < len(self.peers) else None):
                    if not (self.directory / DONE_MARKER.format(r)).exists():  # it may have just written it
                        ended.append(r)
                    waiting.discard(r)
            if not waiting:
                return sorted(ended)

    def failures(self) -> list[dict]:
        """The failed markers of this attempt's ranks."""
        return [f for r in range(self.world.size) if (f := self._read_marker(FAILED_MARKER.format(r)))]

    def write_merged(self, status: dict):
        """Rank 0: the records are merged (and the summary written if complete); the others may go on."""
        self._write_marker(MERGED_MARKER, status)

    def wait_merged(self, tick: Callable[[], Any] | None = None) -> dict:
        """The other ranks: wait (polling) for rank 0's `merged.json` and return it. Raises
        `RunIncomplete` if rank 0 is seen to end without writing it."""
        for _ in _polls(tick):
            status = self._read_marker(MERGED_MARKER)
            if status is not None:
                return status
            if _ended(self.peers[0] if self.peers else None) and (status := self._read_marker(MERGED_MARKER)) is None:
                raise RunIncomplete(
                    f"the run in {self.directory} is incomplete: rank 0 ended without merging the records "
                    "(killed?); the records written are kept: run the same command again to complete them",
                    {"complete": False, "ended": [0]})

    def clear_markers(self):
        """Rank 0, after a complete run that every rank has seen end."""
        _clear_markers(self.directory)

    def _write_marker(self, name: str, content: dict) -> Path:
        path = self.directory / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(canonical_json(content, indent=2))
        os.replace(tmp, path)  # atomic: a marker is there whole or not at all
        return path

    def _read_marker(self, name: str) -> dict | None:
        try:
            return json.loads((self.directory / name).read_text())
        except FileNotFoundError:
            return None

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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _clear_markers(d: Path):
    for pattern in (DONE_MARKER.format("*"), FAILED_MARKER.format("*"), MERGED_MARKER):
        for path in d.glob(pattern + "*"):  # with their .tmp
            path.unlink(missing_ok=True)


def _polls(tick=None, first: float = 0.02, longest: float = 0.5):
    """An endless sequence of polls, sleeping between them (longer and longer, up to `longest` s)."""
    pause = first
    while True:
        yield
        if tick is not None:
            tick()
        time.sleep(pause)
        pause = min(longest, pause * 1.5)


_SELF: dict | None = None


def _process_id() -> dict:
    """This process: host and pid, and `space` (kernel boot id and pid namespace) and `start` (its
    start time in clock ticks), which let another process on the same kernel and pid namespace tell
    that it has ended (its pid gone, a zombie, or reused). Linux; elsewhere `space` is None."""
    global _SELF
    if _SELF is None or _SELF["pid"] != os.getpid():
        space = start = None
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            space = f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
            start = _stat_fields(os.getpid())[19]
        except (OSError, IndexError):
            space = start = None
        _SELF = {"host": socket.gethostname(), "pid": os.getpid(), "space": space, "start": start}
    return _SELF


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (the state) on; the command name before it may hold spaces."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _ended(peer: dict | None) -> bool:
    """True when the process `peer` (its _process_id) has certainly ended; False when it is alive or
    this process cannot tell (another machine or pid namespace, not Linux)."""
    if not peer or peer.get("space") is None or peer.get("space") != _process_id()["space"]:
        return False
    try:
        fields = _stat_fields(int(peer["pid"]))
    except (FileNotFoundError, ProcessLookupError):
        return True
    except (OSError, ValueError):
        return False
    return fields[0] in ("Z", "X", "x") or (peer.get("start") is not None and fields[19] != peer["start"])


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
