"""The service's run directory: one folder per job, every file a checked record written atomically.

    <run_dir>/jobs/<job_id>/spec.json     the submitted GEPAJobSpec
                           status.json   JobStatus (what GET /v1/jobs/<id> returns)
                           state.json    SearchState after the last completed phase (the resume point)
                           result.json   GEPAResult, once done
                           <name>.prev.json   the previous good copy of each of them

Each file is an envelope `{"format": "p2o-gepa-record/1", "sha256": <of the canonical data>, "data": ...}`,
written to a temp file, fsynced and renamed over the old one, after the old one was hard-linked (or
copied) to `<name>.prev.json`: a crash (even SIGKILL) leaves each file at its previous or its new content,
and the content before that is kept as well. Reading checks the envelope and the checksum; a file that
fails (truncated, garbage, `{}`, edited) is replaced by its previous copy when that one is good
(`Record.recovered` says so), otherwise `CorruptRecord` names the path and the reason. Files written
before the envelope existed are read as they are (their typed parser still checks them).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from p2o.atomic import atomic_write_json

log = logging.getLogger(__name__)

FORMAT = "p2o-gepa-record/1"
T = TypeVar("T")


class CorruptRecord(ValueError):
    """A record file (and its previous copy) that cannot be used; names the path and why."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass
class Record(Generic[T]):
    """A parsed record; `recovered` is non-empty when the current file was bad and the previous copy was used."""

    value: T
    recovered: str = ""


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prev_path(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def write_json_atomic(path: Path, data: Any) -> None:
    """Plain JSON `data` at `path` (`p2o.atomic`: temp file + fsync + rename; no envelope, no previous copy)."""
    atomic_write_json(path, data)
    _fsync_dir(path.parent)


def write_record(path: Path, data: Any) -> None:
    """`data` in a checked envelope at `path`; the current file (if any) becomes `<name>.prev.json`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _canonical(data)
    envelope = b'{"format":"%s","sha256":"%s","data":%s}' % (FORMAT.encode(), hashlib.sha256(payload).hexdigest()
                                                             .encode(), payload)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(envelope)
            f.flush()
            os.fsync(f.fileno())
        if path.exists() and _check(path) is None:  # keep the current good copy; never keep a bad one
            prev = prev_path(path)
            # a copy, not a hard link: a link would make both names one file until the rename below, and
            # damage to `path` in that window (a kill, then a torn or edited file) would reach the copy too
            copy_tmp = prev.with_name(prev.name + ".tmp")
            shutil.copyfile(path, copy_tmp)
            with open(copy_tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(copy_tmp, prev)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _load(path: Path) -> Any:
    """The data of a record file; raises CorruptRecord, FileNotFoundError."""
    raw = path.read_bytes()
    if not raw.strip():
        raise CorruptRecord(path, f"empty file ({len(raw)} bytes)")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptRecord(path, f"not valid JSON ({e}); truncated or overwritten?") from None
    if isinstance(doc, dict) and "format" in doc:
        if doc.get("format") != FORMAT:
            raise CorruptRecord(path, f"unknown record format {doc.get('format')!r} (expected {FORMAT!r})")
        if "data" not in doc or not isinstance(doc.get("sha256"), str):
            raise CorruptRecord(path, "record envelope without data or checksum")
        if hashlib.sha256(_canonical(doc["data"])).hexdigest() != doc["sha256"]:
            raise CorruptRecord(path, "checksum mismatch: the file was modified or partly written")
        return doc["data"]
    if not isinstance(doc, dict) or not doc:
        raise CorruptRecord(path, f"not a record (got {json.dumps(doc)[:40]})")
    return doc  # written before records had an envelope


def _check(path: Path) -> str | None:
    try:
        _load(path)
    except CorruptRecord as e:
        return e.reason
    except OSError as e:
        return str(e)
    return None


def read_record(path: Path, parse: Callable[[Any], T]) -> Record[T] | None:
    """The parsed record at `path` (or its previous copy); None when neither file exists.

    `parse` turns the data into the typed record and raises (any exception) when it does not fit; that
    counts as corruption too. Raises `CorruptRecord` naming the file and the reason.
    """
    prev = prev_path(path)
    try:
        return Record(parse(_load(path)))
    except FileNotFoundError:
        if not prev.exists():
            return None
        reason = "missing"
    except CorruptRecord as e:
        reason = e.reason
    except Exception as e:  # noqa: BLE001 - the typed parser refused the data
        reason = f"not a valid record ({type(e).__name__}: {e})"
    try:
        value = parse(_load(prev))
    except FileNotFoundError:
        raise CorruptRecord(path, f"{reason}; no previous copy") from None
    except CorruptRecord as e:
        raise CorruptRecord(path, f"{reason}; the previous copy is unusable too ({e.reason})") from None
    except Exception as e:  # noqa: BLE001
        raise CorruptRecord(path, f"{reason}; the previous copy is unusable too ({type(e).__name__}: {e})") from None
    log.warning("%s: %s; using the previous copy %s", path, reason, prev.name)
    return Record(value, f"{path.name}: {reason}; resumed from {prev.name}")


class JobStore:
    """Paths and checked reads/writes for the jobs under `run_dir`."""

    def __init__(self, run_dir: Path):
        self.root = Path(run_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, job_id: str) -> Path:
        return self.root / job_id

    def path(self, job_id: str, name: str) -> Path:
        return self.dir(job_id) / f"{name}.json"

    def job_ids(self) -> list[str]:
        """Every job folder holding a spec or a status (or a previous copy of one)."""
        names = ("spec.json", "status.json", "spec.prev.json", "status.prev.json")
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and any((p / n).is_file() for n in names))

    def read(self, job_id: str, name: str, parse: Callable[[Any], T] = lambda d: d) -> Record[T] | None:
        return read_record(self.path(job_id, name), parse)

    def write(self, job_id: str, name: str, data: Any) -> None:
        write_record(self.path(job_id, name), data)

    def exists(self, job_id: str, name: str) -> bool:
        p = self.path(job_id, name)
        return p.exists() or prev_path(p).exists()

    def set_aside(self, job_id: str, name: str, tag: str) -> Path | None:
        """Move `<name>.json` and its previous copy to `<name>.<tag>.json` (kept, no longer read)."""
        moved = None
        for p in (self.path(job_id, name), prev_path(self.path(job_id, name))):
            if p.exists():
                target = p.with_name(f"{p.stem}.{tag}{p.suffix}")
                os.replace(p, target)
                moved = moved or target
        return moved
