"""The service's run directory: one folder per job, every file written atomically (temp file + fsync + rename).

    <run_dir>/jobs/<job_id>/spec.json     the submitted GEPAJobSpec
                           status.json   JobStatus (what GET /v1/jobs/<id> returns)
                           state.json    SearchState after the last completed phase (the resume point)
                           result.json   GEPAResult, once done

A crash (even SIGKILL) leaves each file either at its previous or at its new content, never torn.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


class JobStore:
    """Paths and atomic reads/writes for the jobs under `run_dir`."""

    def __init__(self, run_dir: Path):
        self.root = Path(run_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, job_id: str) -> Path:
        return self.root / job_id

    def job_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "status.json").is_file())

    def read(self, job_id: str, name: str) -> Any | None:
        return read_json(self.dir(job_id) / f"{name}.json")

    def write(self, job_id: str, name: str, data: Any) -> None:
        write_json_atomic(self.dir(job_id) / f"{name}.json", data)
