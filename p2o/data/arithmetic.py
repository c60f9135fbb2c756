"""Synthetic arithmetic problems with exact gold answers: the embedded default dataset.

Difficulty levels (each adds one dimension of difficulty):
  0. two one-digit operands, + (what a 135M model can sometimes box correctly)
  1. two operands with 1-2 digits, + or -
  2. two operands with 1-3 digits, + - *
  3. three operands with 2-3 digits, + - * (standard precedence)
  4. four operands with 2-4 digits, + - * and parentheses
  5. a two-step word problem (operands of 2-4 digits)

Answers are computed with Python integers (exact). The same seed always gives the same problems.
"""
from __future__ import annotations

import random

from p2o.data.problem import Problem

_LEVELS = {
    0: dict(operands=2, digits=(1, 1), ops="+"),
    1: dict(operands=2, digits=(1, 2), ops="+-"),
    2: dict(operands=2, digits=(1, 3), ops="+-*"),
    3: dict(operands=3, digits=(2, 3), ops="+-*"),
    4: dict(operands=4, digits=(2, 4), ops="+-*"),
}

_NAMES = ["Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goran", "Hana"]
_ITEMS = ["apples", "books", "coins", "marbles", "stamps", "tickets"]


def _number(rng: random.Random, digits: tuple[int, int]) -> int:
    d = rng.randint(*digits)
    return rng.randint(1, 10**d - 1)


def _expression(rng: random.Random, level: int) -> tuple[str, int]:
    spec = _LEVELS[level]
    nums = [_number(rng, spec["digits"]) for _ in range(spec["operands"])]
    ops = [rng.choice(spec["ops"]) for _ in range(spec["operands"] - 1)]
    # Keep products tractable: at most one '*' per expression.
    seen_mul = False
    for i, op in enumerate(ops):
        if op == "*":
            if seen_mul:
                ops[i] = rng.choice("+-")
            seen_mul = True
    parts = [str(nums[0])]
    for op, n in zip(ops, nums[1:], strict=True):
        parts += [op, str(n)]
    if level == 4:  # parenthesise a random adjacent pair
        i = rng.randrange(len(nums) - 1) * 2
        parts[i] = "(" + parts[i]
        parts[i + 2] = parts[i + 2] + ")"
    text = " ".join(parts)
    value = _evaluate(parts)
    shown = text.replace("*", "×")
    return shown, value


def _evaluate(parts: list[str]) -> int:
    """Exact integer evaluation of a token list (numbers, + - *, parentheses glued to numbers) with precedence."""
    tokens: list[str] = []
    for p in parts:
        tokens += [c for c in p if c == "("]
        core = p.strip("()")
        tokens.append(core)
        tokens += [c for c in p if c == ")"]
    pos = 0

    def expr() -> int:
        nonlocal pos
        val = term()
        while pos < len(tokens) and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            rhs = term()
            val = val + rhs if op == "+" else val - rhs
        return val

    def term() -> int:
        nonlocal pos
        val = atom()
        while pos < len(tokens) and tokens[pos] == "*":
            pos += 1
            val *= atom()
        return val

    def atom() -> int:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            val = expr()
            pos += 1  # ')'
            return val
        return int(tok)

    return expr()


def _word_problem(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = (_number(rng, (2, 4)) for _ in range(3))
    kind = rng.randrange(3)
    if kind == 0:
        c = rng.randint(1, a + b)  # never give away more than there is
        return (f"{name} has {a} {item}, buys {b} more and then gives away {c}. "
                f"How many {item} does {name} have now?"), a + b - c
    if kind == 1:
        k = rng.randint(2, 9)
        return (f"{name} packs {a} boxes with {k} {item} each and then finds {b} more. "
                f"How many {item} are there in total?"), a * k + b
    return (f"{name} had {a + b + c} {item}, sold {a} on Monday and {b} on Tuesday. "
            f"How many {item} are left?"), c


def generate(num_problems: int, levels: list[int], level_weights: list[float] | None = None,
             seed: int = 1234, id_prefix: str = "arith") -> list[Problem]:
    """`num_problems` problems with levels drawn from `levels` (weighted); ids are `{prefix}-{seed}-{i}`."""
    if num_problems < 0:
        raise ValueError(f"num_problems: got {num_problems}; expected >= 0")
    bad = [lv for lv in levels if lv not in range(0, 6)]
    if not levels or bad:
        raise ValueError(f"levels: got {levels}; expected a non-empty list of levels in 0..5")
    rng = random.Random(seed)
    weights = level_weights or None
    problems = []
    for i in range(num_problems):
        level = rng.choices(levels, weights=weights)[0]
        if level == 5:
            question, value = _word_problem(rng)
        else:
            expr, value = _expression(rng, level)
            question = f"What is {expr}?"
        problems.append(Problem(id=f"{id_prefix}-{seed}-{i}", question=question, answer=str(value),
                                source="arithmetic", meta={"level": level}))
    return problems


def binary_problems(num_problems: int, seed: int = 1234, id_prefix: str = "binop") -> list[Problem]:
    """`a op b` problems for the GRPO-vs-TRL benchmark, drawn from `random.Random(seed)`.

    The exact call order per problem (so any other implementation reproduces the same list):
        op = rng.choice("+-*")
        a  = rng.randint(1, 10 ** rng.randint(1, 3) - 1)
        b  = rng.randint(1, 10 ** rng.randint(1, 3) - 1)
    The question is f"What is {a} {op} {b}?" (a plain '*'); the answer is the exact integer.
    Ids are `{prefix}-{seed}-{i}`."""
    if num_problems < 0:
        raise ValueError(f"num_problems: got {num_problems}; expected >= 0")
    rng = random.Random(seed)
    problems = []
    for i in range(num_problems):
        op = rng.choice("+-*")
        a = rng.randint(1, 10 ** rng.randint(1, 3) - 1)
        b = rng.randint(1, 10 ** rng.randint(1, 3) - 1)
        value = a + b if op == "+" else a - b if op == "-" else a * b
        problems.append(Problem(id=f"{id_prefix}-{seed}-{i}", question=f"What is {a} {op} {b}?", answer=str(value),
                                source="arithmetic", meta={"op": op}))
    return problems
