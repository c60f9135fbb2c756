"""Problems for training and evaluation: records, loaders, the synthetic arithmetic generator."""
from __future__ import annotations

from p2o.data.problem import Problem

__all__ = ["Problem", "load_train_problems", "load_eval_problems"]


def load_train_problems(cfg) -> list[Problem]:
    """Training problems for a `DataConfig` (synthetic arithmetic or a file with the configured field mapping)."""
    from p2o.data import arithmetic, loaders

    if cfg.source == "arithmetic":
        a = cfg.arithmetic
        problems = arithmetic.generate(a.num_problems, a.levels, a.level_weights or None, seed=a.seed)
    else:
        problems = loaders.load_problems(cfg.source, cfg.question_key, cfg.answer_key, cfg.id_key)
    return problems[: cfg.max_problems] if cfg.max_problems else problems


def load_eval_problems(cfg) -> list[Problem]:
    """Held-out problems (evaluated without templates): '' none, 'arithmetic' a disjoint synthetic set, or a file."""
    from p2o.data import arithmetic, loaders

    if not cfg.eval_source:
        return []
    if cfg.eval_source == "arithmetic":
        a = cfg.arithmetic
        # A different seed stream and id prefix; exact duplicates of training questions are removed.
        train_questions = {p.question for p in load_train_problems(cfg)}
        pool = arithmetic.generate(cfg.eval_size * 2 + 16, a.levels, a.level_weights or None,
                                   seed=a.seed + 1_000_003, id_prefix="heldout")
        return [p for p in pool if p.question not in train_questions][: cfg.eval_size]
    return loaders.load_problems(cfg.eval_source, cfg.question_key, cfg.answer_key, cfg.id_key)
