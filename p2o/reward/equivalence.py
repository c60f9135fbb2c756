"""Equivalence of two parsed answers (sympy expressions or `values` records).

`equivalent(pred, gold, ...)` returns the reason code of the proof of equality, or None:

1. expressions: structural equality or exact rational arithmetic -> `equal_symbolic`; then sympy
   (`expand`, then `simplify`) of the difference -> `equal_symbolic`; then numeric evaluation (30 digits)
   agreeing to 1e-12 relative -> `equal_numeric` (identities sympy cannot prove), or, when either answer was
   written with a decimal point, agreeing to `rel_tol` -> `equal_numeric` (0.3333333 for 1/3, 1.414214 for
   sqrt 2); with free symbols, values at 6 seeded random points are compared FIRST (cheap rejection of
   wrong answers before any simplification), then expand/simplify -> `equal_symbolic`, else agreement at
   the points -> `equal_numeric`.
   Two exact rationals are never compared with a tolerance (12 vs 21, 1000000 vs 1000001 differ).
2. a percent sign on either side (already stripped) accepts both readings: `10%` = 10 = 0.1.
3. tuples/intervals: same length, same brackets, equal item by item in order; a bare list `1, 2` matches a
   parenthesised tuple in order. Sets and bare lists: equal as multisets (any order). A one-element set
   matches its element. Unions: equal as sets of parts. Matrices: same shape, equal cell by cell; a one-column
   matrix matches a tuple. Relations: same operators and sides (or the mirrored relation); equations
   `l1 = r1`, `l2 = r2` also match when `l1 - r1 = +-(l2 - r2)`. Text: equal after lower-casing.
"""
from __future__ import annotations

import random
from typing import Any

import sympy

from p2o.reward.values import Bracketed, MatrixOf, Relation, SetOf, Text, UnionOf
from p2o.reward.verdict import EQUAL_NUMERIC, EQUAL_STRING, EQUAL_SYMBOLIC

MAX_ITEMS = 64          # items per collection compared pairwise
EXACT_REL_TOL = 1e-12   # numeric agreement that counts as an identity sympy could not prove
_DIGITS = 30


def _finite(x: sympy.Basic) -> bool:
    return not x.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo)


def _numeric(x: sympy.Basic) -> complex | None:
    try:
        v = complex(sympy.N(x, _DIGITS))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return None
    if v != v or abs(v) == float("inf"):
        return None
    return v


def _close(a: complex, b: complex, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300) or (a == b)


def equal_expr(a: sympy.Basic, b: sympy.Basic, approx: bool, rel_tol: float) -> str | None:
    """Reason code when expressions `a` and `b` are equal, else None (see the module docstring)."""
    if a == b:
        return EQUAL_SYMBOLIC
    if not (_finite(a) and _finite(b)):
        return None  # infinities compare only structurally (oo == oo above)
    if a.is_Rational and b.is_Rational:
        if approx and _close(complex(a), complex(b), rel_tol) and not (a.is_Integer and b.is_Integer):
            return EQUAL_NUMERIC
        return None
    free = a.free_symbols | b.free_symbols
    diff = a - b
    if diff == 0:
        return EQUAL_SYMBOLIC
    tol = max(1e-6, rel_tol if approx else 0.0)
    if not free:
        va, vb = _numeric(a), _numeric(b)
        if va is None or vb is None:
            return None
        if not _close(va, vb, tol):  # cheap rejection before any simplification
            return None
        if sympy.expand(diff) == 0 or sympy.simplify(diff) == 0:
            return EQUAL_SYMBOLIC
        if _close(va, vb, EXACT_REL_TOL) or (approx and _close(va, vb, rel_tol)):
            return EQUAL_NUMERIC
        return None
    at_points = _equal_at_points(a, b, sorted(free, key=str), 1e-9 if not approx else max(1e-9, rel_tol))
    if at_points is False:  # cheap rejection: most wrong answers never reach simplify
        return None
    if sympy.expand(diff) == 0 or sympy.simplify(diff) == 0:
        return EQUAL_SYMBOLIC
    return EQUAL_NUMERIC if at_points else None


def _equal_at_points(a: sympy.Basic, b: sympy.Basic, syms: list[sympy.Symbol], rel: float) -> bool | None:
    """True/False when a and b agree/disagree at 6 seeded random points (>= 3 must evaluate); else None."""
    rng = random.Random(0)
    valid = 0
    for _ in range(6):
        # non-integer points in (0.1, 3): away from the usual poles/roots at small integers, no overflow
        point = {s: sympy.Float(round(rng.uniform(0.1, 3.0), 6), _DIGITS) for s in syms}
        va, vb = _numeric_at(a, point), _numeric_at(b, point)
        if va is None or vb is None:
            continue  # undefined there
        if not (_close(va, vb, rel) or abs(va - vb) <= 1e-12):  # absolute floor: cancellation near a root
            return False
        valid += 1
    return True if valid >= 3 else None


def _numeric_at(x: sympy.Basic, point: dict) -> complex | None:
    try:
        v = complex(x.evalf(_DIGITS, subs=point))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, AttributeError):
        return None
    if v != v or abs(v) == float("inf"):
        return None
    return v


def _percent_variants(v: Any, percent: bool) -> list[Any]:
    if percent and isinstance(v, sympy.Basic):
        return [v, v / 100]
    return [v]


def equivalent(pred: Any, gold: Any, *, approx: bool = False, rel_tol: float = 1e-6,
               pred_percent: bool = False, gold_percent: bool = False) -> str | None:
    """Reason code (`equal_symbolic`/`equal_numeric`/`equal_string`) when `pred` equals `gold`, else None.

    `approx`: either answer was written with a decimal point (enables the `rel_tol` comparison).
    `pred_percent`/`gold_percent`: a percent sign was stripped from that side.
    """
    for p in _percent_variants(pred, pred_percent):
        for g in _percent_variants(gold, gold_percent):
            r = _equal(p, g, approx, rel_tol)
            if r is not None:
                return r
    return None


def _equal(a: Any, b: Any, approx: bool, tol: float) -> str | None:
    if isinstance(a, sympy.Basic) and isinstance(b, sympy.Basic):
        return equal_expr(a, b, approx, tol)
    if isinstance(a, Text) or isinstance(b, Text):
        if isinstance(a, Text) and isinstance(b, Text) and a.text.replace(" ", "") == b.text.replace(" ", ""):
            return EQUAL_STRING
        text, other = (a, b) if isinstance(a, Text) else (b, a)
        if len(text.text) == 1 and _letter(other) == text.text:  # choice "C" vs a lower-case c
            return EQUAL_STRING
        return None
    # one-element set vs its element
    if isinstance(a, SetOf) and a.braces and len(a.items) == 1 and not isinstance(b, SetOf):
        return _equal(a.items[0], b, approx, tol)
    if isinstance(b, SetOf) and b.braces and len(b.items) == 1 and not isinstance(a, SetOf):
        return _equal(a, b.items[0], approx, tol)
    if isinstance(a, Bracketed) and isinstance(b, Bracketed):
        if (a.left, a.right) != (b.left, b.right):
            return None
        return _in_order(a.items, b.items, approx, tol)
    if isinstance(a, SetOf) and isinstance(b, SetOf):
        return _unordered(a.items, b.items, approx, tol)
    for x, y in ((a, b), (b, a)):
        if isinstance(x, SetOf) and not x.braces and isinstance(y, Bracketed) and (y.left, y.right) == ("(", ")"):
            return _in_order(x.items, y.items, approx, tol)
        if isinstance(x, MatrixOf) and isinstance(y, Bracketed) and all(len(r) == 1 for r in x.rows):
            return _in_order(tuple(r[0] for r in x.rows), y.items, approx, tol)
    if isinstance(a, UnionOf) and isinstance(b, UnionOf):
        return _unordered(a.parts, b.parts, approx, tol)
    if isinstance(a, MatrixOf) and isinstance(b, MatrixOf):
        if len(a.rows) != len(b.rows) or len(a.rows[0]) != len(b.rows[0]):
            return None
        return _in_order(tuple(c for r in a.rows for c in r), tuple(c for r in b.rows for c in r), approx, tol)
    if isinstance(a, Relation) and isinstance(b, Relation):
        return _relation(a, b, approx, tol)
    return None


def _letter(v: Any) -> str | None:
    if isinstance(v, sympy.Symbol) and len(v.name) == 1:
        return v.name.lower()
    return {sympy.E: "e", sympy.I: "i"}.get(v) if isinstance(v, sympy.Basic) else None


def _combine(reasons: list[str]) -> str:
    if EQUAL_NUMERIC in reasons:
        return EQUAL_NUMERIC
    if reasons and all(r == EQUAL_STRING for r in reasons):
        return EQUAL_STRING
    return EQUAL_SYMBOLIC


def _in_order(xs: tuple[Any, ...], ys: tuple[Any, ...], approx: bool, tol: float) -> str | None:
    if len(xs) != len(ys) or len(xs) > MAX_ITEMS:
        return None
    reasons = []
    for x, y in zip(xs, ys, strict=True):
        r = _equal(x, y, approx, tol)
        if r is None:
            return None
        reasons.append(r)
    return _combine(reasons)


def _unordered(xs: tuple[Any, ...], ys: tuple[Any, ...], approx: bool, tol: float) -> str | None:
    """Multiset equality by greedy matching (items of an answer are pairwise distinct in practice)."""
    if len(xs) != len(ys) or len(xs) > MAX_ITEMS:
        return None
    left = list(ys)
    reasons = []
    for x in xs:
        for k, y in enumerate(left):
            r = _equal(x, y, approx, tol)
            if r is not None:
                reasons.append(r)
                del left[k]
                break
        else:
            return None
    return _combine(reasons)


_MIRROR = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "=", "!=": "!="}


def _relation(a: Relation, b: Relation, approx: bool, tol: float) -> str | None:
    if a.ops == b.ops:
        r = _in_order(a.terms, b.terms, approx, tol)
        if r is not None:
            return r
    if tuple(_MIRROR[o] for o in reversed(a.ops)) == b.ops:
        r = _in_order(tuple(reversed(a.terms)), b.terms, approx, tol)
        if r is not None:
            return r
    if a.ops == ("=",) and b.ops == ("=",) and all(isinstance(t, sympy.Basic) for t in a.terms + b.terms):
        da, db = a.terms[0] - a.terms[1], b.terms[0] - b.terms[1]
        r = equal_expr(da, db, approx, tol) or equal_expr(da, -db, approx, tol)
        if r is None and db != 0:  # the same equation scaled: 3x+2y=6 and 6x+4y=12
            ratio = sympy.simplify(da / db)
            if ratio.is_number and ratio.is_finite and ratio != 0:
                r = EQUAL_SYMBOLIC
        return r
    return None
