"""Structured answer values produced by the restricted parser.

A parsed answer is a sympy expression (`sympy.Basic`) or one of the records below. The records hold
already-parsed parts (sympy expressions or other records); none of them holds raw model text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import sympy


@dataclass(frozen=True)
class Bracketed:
    """A comma list inside brackets: a tuple/point `(a, b, c)`, a list `[a, b, c]`, or an interval
    `(a, b]` when it has two items. `left` is '(' or '['; `right` is ')' or ']'."""

    left: str
    right: str
    items: tuple[Any, ...]


@dataclass(frozen=True)
class SetOf:
    """An unordered collection: `\\{a, b\\}` (`braces=True`) or a bare top-level list `a, b` (`braces=False`)."""

    items: tuple[Any, ...]
    braces: bool


@dataclass(frozen=True)
class UnionOf:
    """A union of intervals / sets joined with `\\cup` or 'U'."""

    parts: tuple[Any, ...]


@dataclass(frozen=True)
class MatrixOf:
    """A matrix from `\\begin{pmatrix}...\\end{pmatrix}` (and b/v/plain matrix environments): rows of cells."""

    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Relation:
    """A chain `e0 op1 e1 op2 e2 ...` with ops from '=', '<', '<=', '>', '>=', '!='."""

    ops: tuple[str, ...]
    terms: tuple[Any, ...]


@dataclass(frozen=True)
class Text:
    """A non-mathematical answer (words, a multiple-choice letter); compared case-insensitively."""

    text: str


Value = Union[sympy.Basic, Bracketed, SetOf, UnionOf, MatrixOf, Relation, Text]
