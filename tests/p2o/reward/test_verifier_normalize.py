"""String normalisation, one group of cases per rule (in the order the rules apply)."""
from __future__ import annotations

import pytest

from p2o.reward.normalize import normalize, split_choice


def _n(s: str) -> str:
    return normalize(s).text


@pytest.mark.parametrize("raw, expected", [("$5$", "5"), ("$$x+1$$", "x+1"), ("\\(3\\)", "3"), ("\\[7\\]", "7"),
                                           ("a$b", "ab")])
def test_math_delimiters(raw, expected):
    assert _n(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("1\\,2", "1 2"), ("x\\!+\\!1", "x + 1"), ("a\\;b", "a b"), ("a\\quad b", "a b"), ("\\displaystyle 5", "5"),
    ("\\left(1, 2\\right]", "(1, 2]"), ("\\bigl(x\\bigr)", "(x)"), ("\\left.7\\right.", "7"), ("a~b", "a b"),
    ("\\begin{pmatrix}1\\\\ 2\\end{pmatrix}", "\\begin{pmatrix}1\\\\ 2\\end{pmatrix}"),  # row break survives
])
def test_spacing_and_sizing(raw, expected):
    assert _n(raw) == expected


@pytest.mark.parametrize("raw, expected", [("\\dfrac{1}{2}", "\\frac{1}{2}"), ("\\tfrac12", "\\frac12"),
                                           ("\\dbinom{5}{2}", "\\binom{5}{2}")])
def test_fraction_variants(raw, expected):
    assert _n(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("\\text{even}", "even"), ("\\textbf{12}", "12"), ("\\mathrm{(B)}", "B"), ("\\text{\\textbf{x}}", "x"),
    ("\\mbox{yes}", "yes"), ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"), ("\\text{a {b} c}", "a {b} c"),
])
def test_text_wrappers(raw, expected):
    assert _n(raw) == expected


@pytest.mark.parametrize("raw", ["60^\\circ", "60^{\\circ}", "60°", "60 degrees", "60\\degree", "60 \\text{ degrees}"])
def test_degrees(raw):
    n = normalize(raw)
    assert n.text == "60" and n.degrees and not n.percent


@pytest.mark.parametrize("raw", ["25\\%", "25%", "25 percent"])
def test_percent(raw):
    n = normalize(raw)
    assert n.text == "25" and n.percent


@pytest.mark.parametrize("raw, expected", [("\\$18.90", "18.90"), ("18.90\\$", "18.90")])
def test_dollars(raw, expected):
    assert _n(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("5 \\text{ cm}", "5"), ("16\\pi \\text{ square units}", "16\\pi"), ("7.5\\,\\mathrm{m/s}", "7.5"),
    ("9.8 \\text{ m/s}^2", "9.8"), ("12 \\text{ inches}", "12"), ("13.6 \\text{ eV}", "13.6"),
    ("204 \\text{ ways}", "204"), ("x \\text{ cm}", "x cm"),  # no number: not a unit strip
])
def test_units(raw, expected):
    assert _n(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("10,000", "10000"), ("1,234,567.5", "1234567.5"), ("10{,}000", "10000"), ("10\\,000", "10000"),
    ("-1,000", "-1000"), ("1,2", "1,2"), ("(1,000)", "(1,000)"), ("12,34", "12,34"),  # not thousands
])
def test_thousands(raw, expected):
    assert _n(raw) == expected


@pytest.mark.parametrize("raw, expected", [("12.", "12"), ("x+1.", "x+1"), ("3.5", "3.5")])
def test_trailing_period(raw, expected):
    assert _n(raw) == expected


@pytest.mark.parametrize("raw, expected", [("1011_{2}", "1011_2"), ("x_{12}", "x_12")])
def test_subscripts(raw, expected):
    assert _n(raw) == expected


@pytest.mark.parametrize("raw, expected", [("(C)", "C"), ("\\textbf{(C)}", "C"), ("C", "C"), ("(F)", "(F)")])
def test_choice_letters(raw, expected):
    assert _n(raw) == expected


def test_split_choice():
    assert split_choice("(C) 12") == ("C", "12")
    assert split_choice(_n("\\textbf{(B) } 17")) == ("B", "17")
    assert split_choice("C") is None and split_choice("(1, 2)") is None


def test_whitespace_collapsed():
    assert _n("  x  +   1 ") == "x + 1"
