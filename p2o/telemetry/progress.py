"""Progress bars with ETA for long phases (generation, training, GEPA polling); silent when disabled, and when
stderr is not a terminal (unless --verbose): a log file would get every redrawn frame."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from p2o.logs import progress_enabled


def make_bar(desc: str, total: float | None, enabled: bool = True, unit: str = "it") -> tqdm:
    """A tqdm bar on stderr (silent when disabled or stderr is not a terminal); the caller closes it."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress_enabled(enabled), dynamic_ncols=True,
                leave=False)


@contextmanager
def progress(desc: str, total: float | None, enabled: bool = True, unit: str = "it") -> Iterator[tqdm]:
    """`make_bar` as a context manager that closes the bar on exit."""
    bar = make_bar(desc, total, enabled, unit)
    try:
        yield bar
    finally:
        bar.close()
