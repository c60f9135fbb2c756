"""The answer verifier: binary math reward over untrusted model text.

    from p2o.reward import Verdict, Verifier, extract_answer

`Verifier(cfg: RewardConfig)` scores (response, gold) pairs in worker processes with a hard timeout;
`extract_answer(text, fallback)` is the pure extraction step; `compare_answers(pred, gold)` compares two
answer strings in-process (no time bound: trusted input only). See docs/verifier.md.
"""
from p2o.reward.extract import extract_answer
from p2o.reward.verdict import Verdict
from p2o.reward.verifier import Verifier


def compare_answers(pred: str, gold: str, rel_tol: float = 1e-6) -> tuple[bool, str]:
    """(correct, reason) for two answer strings, in this process (imports sympy; no time bound)."""
    from p2o.reward.grade import compare_answers as _compare
    return _compare(pred, gold, rel_tol)


__all__ = ["Verdict", "Verifier", "extract_answer", "compare_answers"]
