"""Context distillation (P2O Eq. 4 and the released code's context ratio mask).

A hard sample's rollout y is generated from the templated prompt x+z but trained on the original prompt x.
For each templated row the trainer computes old log-probs of y under both contexts (the dual-context pass)
and picks, per `p2o.distill`:

  ratio_mask (released code):  old = logp_old(y_t|x);  keep token t iff lo <= pi_old(y_t|x)/pi_old(y_t|x+z) <= hi
  replace_prompts:             old = logp_old(y_t|x);  no mask (Eq. 4 as written)
  fix_importance_ratio:        old = logp_old(y_t|x+z); no mask, so the PPO ratio pi(y_t|x)/pi_old(y_t|x+z) is
                               the importance ratio between the training and the behaviour context

Untemplated rows keep old = logp_old(y_t|x) and mask 1. `p2o.distill=none` (the paper's "w/o context
distillation" ablation) trains templated rows on x+z: their training context is their generation context
(`p2o.train.rows.plan_requests`), so they are scored like untemplated rows (old log-probs, loss and mask all
on x+z, no dual-context pass) and never reach `distill_old_logprobs`.
"""
from __future__ import annotations

import math

import torch


def context_ratio_mask(lp_x: torch.Tensor, lp_xz: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Bool [T]: lo <= exp(lp_x - lp_xz) <= hi, evaluated in log space (no overflow)."""
    d = lp_x - lp_xz
    return (d >= math.log(lo)) & (d <= math.log(hi))


def distill_old_logprobs(mode: str, lp_x: torch.Tensor, lp_xz: torch.Tensor, lo: float,
                         hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(old log-probs [T], token mask [T] float) for the packed tokens of templated rows."""
    if mode == "ratio_mask":
        return lp_x, context_ratio_mask(lp_x, lp_xz, lo, hi).float()
    if mode == "replace_prompts":
        return lp_x, torch.ones_like(lp_x)
    if mode == "fix_importance_ratio":
        return lp_xz, torch.ones_like(lp_x)
    raise ValueError(f"p2o.distill: got {mode!r}; expected ratio_mask, replace_prompts or fix_importance_ratio "
                     "(with 'none' no row is trained on another context than its generation prompt)")
