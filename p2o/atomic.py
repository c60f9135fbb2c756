"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Each write goes to a temp file in the destination's folder (same filesystem, so the rename is atomic), is
flushed and fsync'ed, and replaces the destination with `os.replace`. If anything fails before the rename,
the temp file is removed and the destination is left as it was.

    atomic_write_text(path, text)
    atomic_write_json(path, obj, indent=2)
    with atomic_write(path, "w", newline="") as f: csv.writer(f).writerows(rows)   # streaming writers
    with atomic_path(path) as tmp: pq.write_table(table, tmp)                      # writers that want a path

JSON Lines files: `p2o.jsonl.write_jsonl` (built on these).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _create_temp(path: Path) -> Path:
    """An empty new file `.<name>.<random>.tmp` beside `path`, with the mode a plain `open` would give (0666 less
    the umask; `tempfile.mkstemp` would make it 0600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not create a temp file beside {path}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A fresh temp path next to `path` for the caller to write; on a clean exit it is fsync'ed and renamed onto
    `path`, on an exception it is removed (and `path` untouched). The parent folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """An open file ("w" text or "wb" bytes) whose content replaces `path` when the block exits cleanly."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        kw: dict[str, Any] = {} if mode == "wb" else {"encoding": encoding, "newline": newline}
        with tmp.open(mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path`'s content with `data`, atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Replace `path`'s content with `text` (UTF-8 unless told), atomically."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = None, ensure_ascii: bool = False,
                      sort_keys: bool = False) -> None:
    """Replace `path`'s content with `obj` as JSON (a trailing newline when indented), atomically. The object is
    serialised before the file is touched, so an unserialisable object leaves `path` as it was."""
    text = json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    atomic_write_text(path, text + "\n" if indent is not None else text)
