"""Final-answer extraction: the last \\boxed{} / \\fbox{} with nested braces, and the optional fallbacks."""
from __future__ import annotations

import pytest

from p2o.reward import extract_answer
from p2o.reward.extract import last_boxed


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{5}", "5"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),                        # nested braces
    ("\\boxed{\\frac{\\sqrt{3}}{2}} done.", "\\frac{\\sqrt{3}}{2}"),  # two levels
    ("first \\boxed{3} then \\boxed{5}", "5"),                       # the last box wins
    ("\\boxed{5} then \\boxed{3}", "3"),
    ("\\fbox{7}", "7"),
    ("\\boxed{1} and \\fbox{2}", "2"),                               # last of either command
    ("\\fbox{2} and \\boxed{1}", "1"),
    ("answer \\boxed 5", "5"),                                       # \boxed with a space and one token
    ("$\\boxed{ 12 }$", "12"),                                        # stripped
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),                            # escaped braces do not count
    ("\\boxed{\\boxed{4}}", "\\boxed{4}"),                           # the outer box (normalisation unwraps)
    ("\\boxed{}", ""),                                               # empty box: empty answer
    ("\\boxedfoo{3} \\boxed{4}", "4"),                               # another command is skipped
])
def test_last_box(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", [
    "The answer is 5.",             # no box (strict)
    "",
    "\\boxed{5",                    # truncated last box
    "\\boxed{3} and \\boxed{5",     # truncated last box is not replaced by an earlier one
    "\\boxed",                      # command without an argument
    "\\boxedfoo{3}",
])
def test_no_answer(text):
    assert extract_answer(text) is None


def test_non_string_is_no_answer():
    assert extract_answer(None) is None  # type: ignore[arg-type]
    assert last_boxed("no box") is None


@pytest.mark.parametrize("text, expected", [
    ("so we get 12 apples and then 15.", "15"),
    ("x = -3.5 finally", "-3.5"),
    ("ratio 3/4", "3/4"),
    ("total 1,000", "1,000"),
    ("no digits", None),
    ("\\boxed{7} then 9", "7"),  # a box always wins over the fallback
])
def test_last_number_fallback(text, expected):
    assert extract_answer(text, fallback="last_number") == expected


@pytest.mark.parametrize("text, expected", [
    ("Thus the answer is 42.", "42"),
    ("The final answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("Answer: 3.5\nmore text", "3.5"),
    ("Final answer: x = 2", "x = 2"),
    ("nothing here", None),
])
def test_answer_is_fallback(text, expected):
    assert extract_answer(text, fallback="answer_is") == expected


def test_malformed_box_disables_fallback():
    assert extract_answer("\\boxed{3 and 4", fallback="last_number") is None


def test_unknown_fallback_is_a_config_error():
    with pytest.raises(ValueError, match="reward.fallback"):
        extract_answer("\\boxed{1}", fallback="guess")


def test_extraction_is_linear_on_long_input():
    import time
    text = "{" * 200_000 + "\\boxed{" + "{" * 100_000
    t = time.perf_counter()
    assert extract_answer(text) is None
    assert time.perf_counter() - t < 5.0
