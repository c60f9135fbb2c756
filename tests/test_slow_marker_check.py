"""The tier check (tests/slow_marker_check.py), run by pytest on generated test files: an unmarked test over
the limit fails with its name, duration and the fix; the `slow` marker (on the test, class or module), a
test under the limit, a limit of 0 and a test that already fails are left alone; a bad limit is refused."""
from __future__ import annotations

import pytest
from slow_marker_check import DEFAULT_SECONDS, ENV_VAR, slow_limit_seconds

# The limit is 0.25 s and the sleeping tests sleep 0.5 s: time.sleep never returns early, so "over" is
# certain; "under" is an empty test, which no load stretches to 0.25 s.
SLEEPY = """
import time
import pytest

def test_unmarked_sleeps():
    time.sleep(0.5)

@pytest.mark.slow
def test_marked_sleeps():
    time.sleep(0.5)

def test_unmarked_fast():
    pass
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeini("[pytest]\nmarkers =\n    slow: long\naddopts = --strict-markers\n")
    pytester.syspathinsert()
    return pytester.runpytest_inprocess("-p", "slow_marker_check", "-rf", *args)


def test_unmarked_test_over_the_limit_fails_naming_test_duration_and_fix(pytester, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "0.25")
    pytester.makepyfile(test_sleepy=SLEEPY)
    result = _run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*test_sleepy.py::test_unmarked_sleeps took 0.* s (call phase) without the `slow` marker*"
        "limit for unmarked tests is 0.25 s (P2O_SLOW_TEST_SECONDS)*Mark it @pytest.mark.slow*",
    ])
    assert "test_marked_sleeps took" not in result.stdout.str()
    assert "test_unmarked_fast took" not in result.stdout.str()


def test_module_and_class_markers_count(pytester, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "0.25")
    pytester.makepyfile(test_module_marked="""
        import time
        import pytest
        pytestmark = pytest.mark.slow
        def test_sleeps():
            time.sleep(0.5)
    """, test_class_marked="""
        import time
        import pytest
        @pytest.mark.slow
        class TestSlow:
            def test_sleeps(self):
                time.sleep(0.5)
    """)
    _run(pytester).assert_outcomes(passed=2)


def test_zero_turns_the_check_off_and_failures_keep_their_own_error(pytester, monkeypatch):
    pytester.makepyfile(test_off="""
        import time
        def test_sleeps():
            time.sleep(0.5)
    """, test_fails="""
        import time
        def test_sleeps_then_fails():
            time.sleep(0.5)
            assert 1 == 2, "its own error"
    """)
    monkeypatch.setenv(ENV_VAR, "0")
    _run(pytester, "test_off.py").assert_outcomes(passed=1)
    monkeypatch.setenv(ENV_VAR, "0.25")
    result = _run(pytester, "test_fails.py")
    result.assert_outcomes(failed=1)
    assert "its own error" in result.stdout.str()
    assert "without the `slow` marker" not in result.stdout.str()


@pytest.mark.parametrize("raw", ["abc", "-1", "nan", "inf"])
def test_a_bad_limit_is_refused_naming_the_variable(raw):
    with pytest.raises(pytest.UsageError, match=f"{ENV_VAR}='{raw}': expected a finite number of seconds >= 0"):
        slow_limit_seconds({ENV_VAR: raw})


def test_limit_default_and_value():
    assert slow_limit_seconds({}) == DEFAULT_SECONDS == 30.0
    assert slow_limit_seconds({ENV_VAR: " 7.5 "}) == 7.5
