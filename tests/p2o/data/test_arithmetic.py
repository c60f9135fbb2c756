"""The synthetic arithmetic generator: exact answers, determinism, levels."""
from __future__ import annotations

import re
from fractions import Fraction

import pytest

from p2o.data import arithmetic


def _reference_value(question: str) -> int:
    """Independent evaluation of 'What is <expr>?' with Fraction arithmetic and a shunting-yard parser."""
    expr = question.removeprefix("What is ").removesuffix("?").replace("×", "*")
    tokens = re.findall(r"\d+|[()+\-*]", expr)
    prec = {"+": 1, "-": 1, "*": 2}
    out, ops = [], []
    for t in tokens:
        if t.isdigit():
            out.append(Fraction(int(t)))
        elif t == "(":
            ops.append(t)
        elif t == ")":
            while ops[-1] != "(":
                out.append(ops.pop())
            ops.pop()
        else:
            while ops and ops[-1] != "(" and prec[ops[-1]] >= prec[t]:
                out.append(ops.pop())
            ops.append(t)
    out += reversed(ops)
    stack = []
    for t in out:
        if isinstance(t, Fraction):
            stack.append(t)
        else:
            b, a = stack.pop(), stack.pop()
            stack.append(a + b if t == "+" else a - b if t == "-" else a * b)
    assert stack[0].denominator == 1
    return int(stack[0])


def test_expression_answers_are_exact():
    problems = arithmetic.generate(400, [0, 1, 2, 3, 4], seed=7)
    for p in problems:
        assert int(p.answer) == _reference_value(p.question), p


def test_level_zero_is_one_digit_addition():
    problems = arithmetic.generate(200, [0], seed=5)
    for p in problems:
        a, op, b = p.question.removeprefix("What is ").removesuffix("?").split()
        assert op == "+" and 1 <= int(a) <= 9 and 1 <= int(b) <= 9 and int(p.answer) == int(a) + int(b)
    assert len({p.question for p in problems}) > 40  # all 81 pairs are possible


def test_word_problems_have_integer_non_negative_answers():
    for p in arithmetic.generate(200, [5], seed=3):
        assert p.meta["level"] == 5 and int(p.answer) >= 0 and "How many" in p.question


def test_deterministic_and_seed_dependent():
    a = arithmetic.generate(50, [1, 2, 3], seed=11)
    assert a == arithmetic.generate(50, [1, 2, 3], seed=11)
    assert a != arithmetic.generate(50, [1, 2, 3], seed=12)
    assert len({p.id for p in a}) == 50


def test_level_weights_respected():
    problems = arithmetic.generate(2000, [1, 3], level_weights=[0.9, 0.1], seed=0)
    frac = sum(p.meta["level"] == 1 for p in problems) / len(problems)
    assert 0.87 < frac < 0.93


@pytest.mark.parametrize("levels", [[], [-1], [6]])
def test_bad_levels(levels):
    with pytest.raises(ValueError, match="levels"):
        arithmetic.generate(3, levels)
