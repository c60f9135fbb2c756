"""Equivalence decisions and their reason codes (in-process `compare_answers`)."""
from __future__ import annotations

import pytest

from p2o.reward import compare_answers


@pytest.mark.parametrize("pred, gold, reason", [
    ("\\frac{1}{2}", "\\frac{1}{2}", "equal_string"),
    ("\\left(1,2\\right]", "(1, 2]", "equal_string"),
    ("0.5", "\\frac{1}{2}", "equal_symbolic"),          # exact rational arithmetic
    ("\\frac{2}{4}", "\\frac{1}{2}", "equal_symbolic"),
    ("\\sqrt{12}", "2\\sqrt{3}", "equal_symbolic"),
    ("(x+1)^2", "x^2+2x+1", "equal_symbolic"),         # expand
    ("\\sin^2 x + \\cos^2 x", "1", "equal_symbolic"),  # simplify
    ("0.3333333", "\\frac{1}{3}", "equal_numeric"),    # decimal within rel_tol
    ("1.4142136", "\\sqrt{2}", "equal_numeric"),
    ("2.718281828", "e", "equal_numeric"),
])
def test_reasons(pred, gold, reason):
    assert compare_answers(pred, gold) == (True, reason)


@pytest.mark.parametrize("pred, gold", [
    ("12", "21"), ("0.333", "\\frac{1}{3}"), ("1.41", "\\sqrt{2}"), ("1000001", "1000000"),
    ("3.14", "\\pi"), ("x^2+1", "x^2-1"), ("\\frac{1}{2}", "\\frac{1}{3}"), ("-5", "5"),
])
def test_not_equal(pred, gold):
    assert compare_answers(pred, gold) == (False, "not_equal")


def test_integers_are_never_compared_with_a_tolerance():
    assert not compare_answers("100000001", "100000000", rel_tol=1e-3)[0]
    assert compare_answers("100000000.5", "100000000", rel_tol=1e-3)[0]  # a decimal opts in to the tolerance


def test_rel_tol_is_configurable():
    assert compare_answers("3.14", "\\pi", rel_tol=1e-3)[0]
    assert not compare_answers("3.14", "\\pi", rel_tol=1e-6)[0]


@pytest.mark.parametrize("pred, gold, ok", [
    ("10\\%", "10", True), ("10", "10\\%", True), ("0.1", "10\\%", True), ("10\\%", "0.1", True),
    ("0.1", "10", False), ("20\\%", "0.1", False),
])
def test_percent_policy(pred, gold, ok):
    """A % sign on either side accepts both readings (10% = 10 = 0.1); without one, 10 and 0.1 differ."""
    assert compare_answers(pred, gold)[0] is ok


@pytest.mark.parametrize("pred, gold, ok", [
    ("[2,5)", "[2, 5)", True), ("[2,5]", "[2, 5)", False), ("(2,5)", "[2, 5)", False),
    ("(-\\infty, 3]", "x \\le 3", True), ("(3,\\infty)", "x>3", True),
    ("(1,2)", "(1,2)", True), ("(2,1)", "(1,2)", False), ("1, 2", "(1, 2)", True),           # tuples ordered
    ("\\{2,1\\}", "\\{1,2\\}", True), ("2, 1", "1, 2", True), ("1", "1, 2", False),           # sets unordered
    ("\\{3\\}", "3", True),
    ("(3,4)\\cup(0,1)", "(0,1)\\cup(3,4)", True), ("(3,4]\\cup(0,1)", "(0,1)\\cup(3,4)", False),
    ("\\begin{bmatrix}1&0\\\\0&1\\end{bmatrix}", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", True),
    ("\\begin{pmatrix}0&1\\\\1&0\\end{pmatrix}", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", False),
    ("y = 3 + 2x", "y = 2x + 3", True), ("4x+2y=2", "2x+y=1", True), ("2x+y=2", "2x+y=1", False),
    ("\\text{Even}", "\\text{even}", True), ("\\text{odd}", "\\text{even}", False),
    ("c", "C", True), ("(C) 12", "C", True), ("(C) 12", "12", True), ("(D) 12", "C", False),
])
def test_structured(pred, gold, ok):
    assert compare_answers(pred, gold)[0] is ok


def test_degrees_are_stripped_not_converted():
    assert compare_answers("30^\\circ", "30")[0]
    assert not compare_answers("30^\\circ", "\\frac{\\pi}{6}")[0]


def test_parse_failures_are_reported():
    assert compare_answers("\\unknown{3}", "3") == (False, "parse_error")
    assert compare_answers("10^{10^{10}}", "3") == (False, "too_complex")
    assert compare_answers("3", "\\weird{3}") == (False, "gold_parse_error")
    assert compare_answers("\\weird{3}", "\\weird{3}") == (True, "equal_string")  # strings still compare


def test_infinities_compare_structurally():
    assert compare_answers("\\infty", "\\infty")[0]
    assert not compare_answers("\\infty", "-\\infty")[0]
    assert not compare_answers("\\frac{1}{0}", "\\infty")[0]
