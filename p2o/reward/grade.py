"""One verdict, computed in the current process: extract -> bound -> normalise -> parse -> compare.

`grade` is the pure core the worker pool runs; it never raises (any unexpected exception becomes an
`internal_error` verdict) but it has no time bound of its own: `Verifier` runs it in worker processes
with a hard timeout. Call it directly only on trusted input or where a hang is acceptable.
"""
from __future__ import annotations

import logging
import re

from p2o.reward.equivalence import equivalent
from p2o.reward.extract import extract_answer
from p2o.reward.normalize import Normalized, normalize, split_choice
from p2o.reward.parser import ParseError, TooComplex, parse_answer
from p2o.reward.verdict import (
    BAD_INPUT,
    EQUAL_STRING,
    INTERNAL_ERROR,
    NO_BOXED,
    NOT_EQUAL,
    PARSE_ERROR,
    TOO_COMPLEX,
    TOO_LONG,
    Verdict,
)

logger = logging.getLogger(__name__)

GOLD_PARSE_ERROR = "gold_parse_error"  # the gold answer is outside the accepted subset and strings differ
_DECIMAL = re.compile(r"\d\.\d|(?<!\d)\.\d")


def grade(response: str, answer: str, fallback: str = "none", max_answer_chars: int = 1000,
          rel_tol: float = 1e-6) -> Verdict:
    """The verdict for one (response, gold answer) pair (see `p2o.reward.verdict` for reason codes)."""
    try:
        if not isinstance(response, str) or not isinstance(answer, str):
            return Verdict(False, None, BAD_INPUT)
        extracted = extract_answer(response, fallback)
        if extracted is None:
            return Verdict(False, None, NO_BOXED)
        if len(extracted) > max_answer_chars:
            return Verdict(False, extracted[:max_answer_chars], TOO_LONG)
        return _verdict(extracted, answer, rel_tol)
    except RecursionError:
        return Verdict(False, None, TOO_COMPLEX)
    except Exception:  # noqa: BLE001 - a reward must not crash the training loop
        logger.exception("verifier internal error (answer=%r)", answer[:200] if isinstance(answer, str) else answer)
        return Verdict(False, None, INTERNAL_ERROR)


def _verdict(extracted: str, answer: str, rel_tol: float) -> Verdict:
    correct, reason = compare_answers(extracted, answer, rel_tol)
    return Verdict(correct, extracted, reason)


def compare_answers(pred: str, gold: str, rel_tol: float = 1e-6) -> tuple[bool, str]:
    """(correct, reason) for an already-extracted answer `pred` against `gold`.

    A multiple-choice answer written with its value, "(C) 12", is correct when either the letter or the
    value matches; otherwise the first failure reason is reported.
    """
    np_, ng = normalize(pred), normalize(gold)
    first: tuple[bool, str] | None = None
    for p in _choice_readings(np_):
        for g in _choice_readings(ng):
            res = _compare_normalized(p, g, rel_tol)
            if res[0]:
                return res
            first = first or res
    assert first is not None
    return first


def _choice_readings(n: Normalized) -> list[Normalized]:
    split = split_choice(n.text)
    if split is None:
        return [n]
    letter, value = split
    return [n, Normalized(letter), normalize(value)]


def _compare_normalized(np_: Normalized, ng: Normalized, rel_tol: float) -> tuple[bool, str]:
    if np_.text == ng.text or (np_.text.replace(" ", "") == ng.text.replace(" ", "") and np_.text):
        return True, EQUAL_STRING
    try:
        gv = parse_answer(ng.text)
    except ParseError:
        gv = None
    try:
        pv = parse_answer(np_.text)
    except TooComplex:
        return False, TOO_COMPLEX
    except ParseError:
        return False, PARSE_ERROR
    if gv is None:
        return False, GOLD_PARSE_ERROR
    approx = bool(_DECIMAL.search(np_.text) or _DECIMAL.search(ng.text))
    reason = equivalent(pv, gv, approx=approx, rel_tol=rel_tol, pred_percent=np_.percent, gold_percent=ng.percent)
    return (True, reason) if reason is not None else (False, NOT_EQUAL)
