"""The verifier's result record and its reason codes."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# reason codes (the `reason` field of a Verdict)
NO_BOXED = "no_boxed"              # no answer could be extracted (strict: no well-formed \boxed{} / \fbox{})
TOO_LONG = "too_long"              # extracted answer longer than reward.max_answer_chars
TOO_COMPLEX = "too_complex"        # exponent / factorial / nesting limits hit while parsing
PARSE_ERROR = "parse_error"        # unequal strings and the answer is outside the accepted math subset
EQUAL_STRING = "equal_string"      # equal after string normalisation
EQUAL_SYMBOLIC = "equal_symbolic"  # exact rational arithmetic or sympy simplification proves equality
EQUAL_NUMERIC = "equal_numeric"    # equal within the numeric tolerance (last resort)
NOT_EQUAL = "not_equal"
TIMEOUT = "timeout"                # the worker exceeded reward.timeout_s and was replaced
BAD_INPUT = "bad_input"            # response or answer is not a string
INTERNAL_ERROR = "internal_error"  # an unexpected exception (logged) or a worker that died mid-pair; wrong

CORRECT_REASONS = frozenset({EQUAL_STRING, EQUAL_SYMBOLIC, EQUAL_NUMERIC})


@dataclass(frozen=True)
class Verdict:
    """A binary reward: `correct` iff an answer was extracted and it is equivalent to the gold answer.

    `extracted` is the extracted final answer (None when nothing was extracted); `reason` is one of the
    reason codes above.
    """

    correct: bool
    extracted: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
