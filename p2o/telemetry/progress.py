"""Progress bars with ETA for long phases (generation, training, GEPA polling); silent when disabled."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress(desc: str, total: float | None, enabled: bool = True, unit: str = "it") -> Iterator[tqdm]:
    """A tqdm bar (on stderr) that is closed on exit; `disable=True` when progress output is off."""
    bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=False)
    try:
        yield bar
    finally:
        bar.close()
