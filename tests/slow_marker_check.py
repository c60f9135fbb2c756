"""Enforce the test tiers: a test whose call phase runs longer than a limit must carry `@pytest.mark.slow`.

`make test-fast` runs `-m "not slow"` for the inner loop and `make test` runs everything (CI). A test that
grows slow without the marker would silently stretch the fast tier, so it fails here instead, naming itself,
its duration and the fix. Only the call phase is timed (fixtures are shared and paid once).

The limit is `P2O_SLOW_TEST_SECONDS` (default 30 s; 0 turns the check off). It is generous on purpose:
tests are marked from ~5 s on an idle 2-core machine, and with `-n 2` on a 2-core machine at a load
average of 30, an unmarked test that takes ~1 s idle was seen to take 19 s. Registered by tests/conftest.py.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import pytest

ENV_VAR = "P2O_SLOW_TEST_SECONDS"
DEFAULT_SECONDS = 30.0

_limit_key = pytest.StashKey[float]()


def slow_limit_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """The limit from `P2O_SLOW_TEST_SECONDS` (seconds, finite, >= 0; 0 = off); the default when unset or empty."""
    raw = environ.get(ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise pytest.UsageError(f"{ENV_VAR}={raw!r}: expected a finite number of seconds >= 0 (0 turns the check off)")
    return value


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_limit_key] = slow_limit_seconds()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    limit = item.config.stash.get(_limit_key, DEFAULT_SECONDS)
    if (call.when == "call" and limit > 0 and report.passed and not hasattr(report, "wasxfail")
            and call.duration > limit and item.get_closest_marker("slow") is None):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} took {call.duration:.1f} s (call phase) without the `slow` marker; "
            f"the limit for unmarked tests is {limit:g} s ({ENV_VAR}). Mark it @pytest.mark.slow "
            f"(or the module: pytestmark = pytest.mark.slow) so that `make test-fast` leaves it out.")
    return report
