"""The restricted parser: values built from tokens, size limits, and nothing evaluated."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import sympy

from p2o.reward.parser import ParseError, TooComplex, parse_answer, tokenize
from p2o.reward.values import Bracketed, MatrixOf, Relation, SetOf, Text, UnionOf

x, y, n = sympy.symbols("x y n")


@pytest.mark.parametrize("src, expected", [
    ("12", sympy.Integer(12)),
    ("0.5", sympy.Rational(1, 2)),              # decimals are exact rationals
    (".25", sympy.Rational(1, 4)),
    ("007", sympy.Integer(7)),
    ("1/3", sympy.Rational(1, 3)),
    ("\\frac{2}{4}", sympy.Rational(1, 2)),
    ("\\frac12", sympy.Rational(1, 2)),          # LaTeX single-token arguments
    ("2\\frac{1}{2}", sympy.Rational(5, 2)),     # mixed number
    ("-2\\frac{1}{2}", sympy.Rational(-5, 2)),
    ("2\\frac{3}{2}", sympy.Integer(3)),         # improper fraction: a product, not a mixed number
    ("2x", 2 * x),                               # implicit multiplication
    ("2(x+1)", 2 * x + 2),
    ("x^2", x**2), ("x^{10}", x**10), ("2^10", sympy.Integer(1024)),
    ("\\sqrt{8}", 2 * sympy.sqrt(2)), ("\\sqrt[3]{27}", sympy.Integer(3)), ("\\sqrt2", sympy.sqrt(2)),
    ("\\pi/2", sympy.pi / 2), ("e", sympy.E), ("i^2", sympy.Integer(-1)),
    ("5!", sympy.Integer(120)), ("\\binom{5}{2}", sympy.Integer(10)), ("|-3|", sympy.Integer(3)),
    ("\\lfloor 2.5 \\rfloor", sympy.Integer(2)), ("\\lceil 2.5 \\rceil", sympy.Integer(3)),
    ("\\sin^2 x", sympy.sin(x) ** 2), ("\\sin 2x", sympy.sin(2 * x)), ("\\log_2 8", sympy.Integer(3)),
    ("\\ln e", sympy.Integer(1)), ("\\exp(0)", sympy.Integer(1)), ("\\cos(\\pi)", sympy.Integer(-1)),
    ("0.\\overline{3}", sympy.Rational(1, 3)), ("0.1\\overline{6}", sympy.Rational(1, 6)),
    ("1.\\overline{142857}", sympy.Rational(8, 7)),
    ("5e-7", sympy.Rational(5, 10**7)), ("1.2E3", sympy.Integer(1200)),
    ("6.4 \\times 10^{3}", sympy.Integer(6400)), ("3 \\cdot 4", sympy.Integer(12)), ("8 \\div 2", sympy.Integer(4)),
    ("x_1 + x_{2}", sympy.Symbol("x_1") + sympy.Symbol("x_2")), ("\\alpha", sympy.Symbol("alpha")),
    ("x = 5", sympy.Integer(5)),                 # x = v is v
    ("f(x) = x^2", x**2),                        # f(x) = ... is its right-hand side
    ("π", sympy.pi), ("√4", sympy.Integer(2)), ("−3", sympy.Integer(-3)),
])
def test_expressions(src, expected):
    got = parse_answer(src)
    assert sympy.simplify(got - expected) == 0, (src, got)


def test_structures():
    assert parse_answer("(1, 2]") == Bracketed("(", "]", (1, 2))
    assert parse_answer("[a, b, c]") == Bracketed("[", "]", tuple(sympy.symbols("a b c")))
    assert parse_answer("\\{1, 2\\}") == SetOf((1, 2), braces=True)
    assert parse_answer("1, 2") == SetOf((1, 2), braces=False)
    assert parse_answer("3 \\text{ or } 4".replace("\\text{ or }", "or")) == SetOf((3, 4), braces=False)
    assert parse_answer("\\emptyset") == SetOf((), braces=True)
    assert parse_answer("1 \\pm \\sqrt{2}") == SetOf((1 + sympy.sqrt(2), 1 - sympy.sqrt(2)), braces=False)
    assert isinstance(parse_answer("(0,1)\\cup(2,3)"), UnionOf)
    m = parse_answer("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}")
    assert m == MatrixOf(((1, 2), (3, 4)))
    assert parse_answer("x > 3") == Bracketed("(", ")", (3, sympy.oo))
    assert parse_answer("x \\le 3") == Bracketed("(", "]", (-sympy.oo, 3))
    assert parse_answer("-1 \\le x < 4") == Bracketed("[", ")", (-1, 4))
    assert parse_answer("x \\in [0, 1]") == Bracketed("[", "]", (0, 1))
    assert parse_answer("(x, y) = (2, -1)") == Bracketed("(", ")", (2, -1))
    assert parse_answer("b = 3, a = 2") == Bracketed("(", ")", (2, 3))   # assignments ordered by name
    assert parse_answer("x = 2, x = 3") == SetOf((2, 3), braces=False)  # roots of one variable
    assert isinstance(parse_answer("x + y = 5"), Relation)
    assert parse_answer("even") == Text("even") and parse_answer("no solution") == Text("no solution")
    assert parse_answer("\\infty") == sympy.oo and parse_answer("-\\infty") == -sympy.oo
    assert parse_answer("C") == Text("c")


@pytest.mark.parametrize("src", [
    "10^{10^{10}}", "9^{9^{9^{9}}}", "2^{2^{2^{2^{2^{2}}}}}", "(10^{100})!", "1001!", "x^{1000}",
    "\\binom{10^{9}}{5}", "\\binom{n}{10^{6}}", "2^{10^{5}}", "1" * 500, "{" * 100 + "1" + "}" * 100, "(" * 100 + "1" + ")" * 100,
    "\\sqrt{" * 100 + "2" + "}" * 100, "1+" * 3000 + "1",
])
def test_limits_raise_too_complex(src):
    with pytest.raises(TooComplex):
        parse_answer(src)


@pytest.mark.parametrize("src", [
    "__import__('os').system('ls')", "lambda: 1", "\\input{/etc/passwd}",
    "\\def\\x{1}", "x.y", "a[1]", "f'(x)", "\\frac{1}", "(1, 2", "1 +", "", "\\unknown{3}", "@", "x == 1;;",
])
def test_outside_subset_raises_parse_error(src):
    with pytest.raises(ParseError):
        parse_answer(src)


def test_sign_runs_are_linear_not_recursive():
    assert parse_answer("-" * 1000 + "1") == 1 and parse_answer("-" * 1001 + "1") == -1


@pytest.mark.parametrize("src", ["exec('1')", "open('f')", "os.system('ls')", "print(1)"])
def test_code_like_words_are_plain_text(src):
    """Word-like code is at most a Text value, compared as a lower-cased string: never called."""
    assert parse_answer(src) == Text(src.lower())


def test_parse_errors_are_value_errors_not_crashes():
    # every limit error is also a ParseError, and both are ValueErrors (never a RecursionError)
    assert issubclass(TooComplex, ParseError) and issubclass(ParseError, ValueError)
    with pytest.raises(TooComplex):
        parse_answer("{" * 5000 + "1" + "}" * 5000)


def test_tokens_are_a_closed_alphabet():
    kinds = {t.kind for t in tokenize("\\frac{x}{2} + \\sin(y)^2 - 3.5 \\cdot \\pi \\le \\begin{pmatrix}1\\end{pmatrix}")}
    assert kinds <= {"num", "var", "cmd", "func", "op", "env_begin", "env_end", "end"}
    with pytest.raises(ParseError):
        tokenize("x # comment")


def test_reward_package_never_evaluates_text():
    """No eval/exec/sympify/parse_expr/parse_latex in the verifier sources (the parser builds sympy objects)."""
    root = Path(__file__).resolve().parents[3] / "p2o" / "reward"
    banned = re.compile(r"\b(eval|exec|sympify|parse_expr|parse_latex|compile|__import__)\s*\(|\bS\(\s*['\"]")
    for path in root.glob("*.py"):
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may name the banned functions
        hits = [m.group(0) for m in banned.finditer(code) if not m.group(0).startswith("re.compile")]
        hits = [h for h in hits if not (h.startswith("compile") and "re." in code[max(0, code.find(h) - 3):code.find(h)])]
        assert not hits, f"{path.name}: {hits}"


@pytest.mark.parametrize("pred, gold, correct", [
    ("x²", "x^2", True), ("2³", "8", True), ("10⁻³", "0.001", True), ("x₁", "x_1", True), ("1²", "1", True),
    ("²", "2", False), ("①", "1", False), ("H₂O", "H2O", False),
])
def test_superscript_and_subscript_digits_are_exponents_not_internal_errors(pred, gold, correct):
    from p2o.reward.grade import compare_answers

    ok, reason = compare_answers(pred, gold)
    assert ok is correct and reason != "internal_error"
