"""`Verifier`: the binary math reward, bounded in time and safe on untrusted model text.

    from p2o.reward import Verifier
    with Verifier(cfg.reward) as v:
        v.score(response, "\\frac{1}{2}")             # Verdict(correct=True, extracted='0.5', reason='equal_symbolic')
        v.score_many([(response, gold), ...])         # pooled across worker processes, same order

Extraction (linear time) and the length check run in the calling process; normalisation, parsing and
sympy comparison run in a `ComparePool` of `cfg.workers` processes with a hard `cfg.timeout_s` per pair.
`score`/`score_many` never raise on any input and may be called from several threads at once.
"""
from __future__ import annotations

import logging
from typing import Any

from p2o.config import RewardConfig
from p2o.reward.extract import FALLBACKS, extract_answer
from p2o.reward.pool import ComparePool
from p2o.reward.verdict import BAD_INPUT, CORRECT_REASONS, INTERNAL_ERROR, NO_BOXED, TOO_LONG, Verdict

logger = logging.getLogger(__name__)


class Verifier:
    """Scores (response, gold answer) pairs; see the module docstring. Close it (or use `with`) to stop workers."""

    def __init__(self, cfg: RewardConfig | None = None):
        cfg = cfg if cfg is not None else RewardConfig()
        if cfg.fallback not in FALLBACKS:
            raise ValueError(f"reward.fallback: got {cfg.fallback!r}; expected one of {', '.join(FALLBACKS)}")
        if cfg.max_answer_chars < 1:
            raise ValueError(f"reward.max_answer_chars: got {cfg.max_answer_chars}; expected >= 1")
        self.cfg = cfg
        defaults = RewardConfig()  # configs written before a field existed fall back to its default
        self._pool = ComparePool(int(cfg.workers), float(cfg.timeout_s),
                                 rel_tol=float(getattr(cfg, "rel_tol", defaults.rel_tol)),
                                 memory_mb=int(getattr(cfg, "worker_memory_mb", defaults.worker_memory_mb)))

    # ------------------------------------------------------------------ scoring
    def _prepare(self, response: Any, answer: Any) -> tuple[Verdict | None, str | None]:
        """(final verdict, None) when decided without parsing, else (None, extracted answer)."""
        if not isinstance(response, str) or not isinstance(answer, str):
            return Verdict(False, None, BAD_INPUT), None
        try:
            extracted = extract_answer(response, self.cfg.fallback)
        except Exception:  # noqa: BLE001 - never raise on model text
            logger.exception("answer extraction failed")
            return Verdict(False, None, INTERNAL_ERROR), None
        if extracted is None:
            return Verdict(False, None, NO_BOXED), None
        if len(extracted) > self.cfg.max_answer_chars:
            return Verdict(False, extracted[:self.cfg.max_answer_chars], TOO_LONG), None
        return None, extracted

    def score(self, response: str, answer: str) -> Verdict:
        """The verdict for one pair, within `timeout_s` of compute (plus waiting for a free worker)."""
        return self.score_many([(response, answer)])[0]

    def score_many(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        """Verdicts for many pairs, in the same order, spread over the worker processes."""
        verdicts: list[Verdict | None] = [None] * len(pairs)
        todo: list[int] = []
        work: list[tuple[str, str]] = []
        extracted: list[str] = []
        for k, pair in enumerate(pairs):
            try:
                response, answer = pair
            except (TypeError, ValueError):
                verdicts[k] = Verdict(False, None, BAD_INPUT)
                continue
            final, ext = self._prepare(response, answer)
            if final is not None:
                verdicts[k] = final
            else:
                assert ext is not None
                todo.append(k)
                work.append((ext, answer))
                extracted.append(ext)
        if work:
            results = self._pool.run(work)
            for k, ext, (correct, reason) in zip(todo, extracted, results, strict=True):
                verdicts[k] = Verdict(bool(correct) and reason in CORRECT_REASONS, ext, reason)
        return [v if v is not None else Verdict(False, None, INTERNAL_ERROR) for v in verdicts]

    @property
    def timeouts(self) -> int:
        """Pairs that hit the time bound since this verifier started."""
        return self._pool.timeouts

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        self._pool.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
