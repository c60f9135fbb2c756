"""verl's dynamic-batch weighting (`grpo.verl_dynamic_bsz`) against partitions and weights worked out by hand."""
from __future__ import annotations

import pytest

from p2o.algo.dynamic_batch import balanced_partitions, verl_update_plan


def test_balanced_partitions_by_hand():
    # Equal size, k=2 over lengths [30, 12, 9, 7, 25, 10]: sorted pairs (7, 9), (10, 12), (25, 30) become partial
    # partitions with spreads 2, 2, 5; the largest spread merges first with the one whose largest bin is larger
    # ((10, 12)): {30+10, 25+12} = {40, 37}; then with (7, 9): {40+7, 37+9} = {47, 46}.
    assert balanced_partitions([30, 12, 9, 7, 25, 10], 2, equal_size=True) == [[0, 3, 5], [1, 2, 4]]
    # Free size, k=2 over [16, 7, 10]: 16 and 10 first ({16}, {10}), then 7 joins the smaller: {10, 7}, {16}.
    assert balanced_partitions([16, 7, 10], 2, equal_size=False) == [[1, 2], [0]]
    assert balanced_partitions([12, 9, 11], 2, equal_size=False) == [[1, 2], [0]]
    with pytest.raises(ValueError, match="equal size"):
        balanced_partitions([1, 2, 3], 2, equal_size=True)
    with pytest.raises(ValueError, match="non-empty"):
        balanced_partitions([1, 2], 3, equal_size=False)


def test_update_plan_weights_by_hand():
    """Six rows, W = 2 GPUs, one mini-batch (B = 3 rows per GPU), budget 32 tokens; row 3 dropped (mask 0).

    balance_batch on the generated lengths gives GPU 0 rows {0, 3, 5}, GPU 1 rows {1, 2, 4} (see above).
    Micro-batch count: GPU 0 needs ceil((16 + 7 + 10) / 32) = 2, GPU 1 ceil(32 / 32) = 1; both use the maximum, 2.
    GPU 0 splits {16, 7, 10} into {3, 5} and {0}; GPU 1 splits {12, 9, 11} into {2, 4} and {1}.
    c = (1 / W) (|m| / B) / (mask tokens of m):
      {3, 5}: (1/2)(2/3) / (0 + 6) = 1/18     {0}: (1/2)(1/3) / 10 = 1/60
      {2, 4}: (1/2)(2/3) / (5 + 5) = 1/30     {1}: (1/2)(1/3) / 8 = 1/48
    """
    generated = [30, 12, 9, 7, 25, 10]  # prompt as sampled (x+z for rows 0 and 4) + response
    trained = [16, 12, 9, 7, 11, 10]  # prompt as trained (x) + response
    mask_tokens = [10, 8, 5, 0, 5, 6]
    (step,) = verl_update_plan(generated, trained, mask_tokens, world_size=2, minibatches=1, max_token_len=32)
    assert step.rows == [0, 1, 2, 3, 4, 5]
    assert step.coef == pytest.approx([1 / 60, 1 / 48, 1 / 30, 1 / 18, 1 / 30, 1 / 18], rel=1e-12)
    # Every GPU's micro-batches hold its B rows, so the weights of the kept tokens sum to 1 ...
    assert sum(c * m for c, m in zip(step.coef, mask_tokens, strict=True)) == pytest.approx(1.0)
    # ... but unlike the exact token-mean (1/34 each) short micro-batches weigh their tokens more.
    assert max(step.coef) / min(c for c, m in zip(step.coef, mask_tokens, strict=True) if m) == pytest.approx(60 / 18)


def test_update_plan_minibatches_by_hand():
    """Eight rows, W = 2, two mini-batches (B = 2), budget 100 (one micro-batch each).

    balance_batch on [30, 12, 9, 7, 25, 10, 8, 14]: sorted pairs (7, 8), (9, 10), (12, 14), (25, 30) have spreads
    1, 1, 2, 5: {30+12, 25+14} = {42, 39}; then (9, 10) (its largest bin beats (7, 8)'s): {51, 49}; then (7, 8):
    {58, 57}, i.e. GPU 0 rows {0, 1, 2, 3}, GPU 1 rows {4, 5, 6, 7}. Mini-batch k is the k-th 2 rows of each GPU:
    {0, 1, 4, 5} and {2, 3, 6, 7}; c = (1/2)(2/2) / (mask tokens of the GPU's 2 rows).
    """
    generated = [30, 12, 9, 7, 25, 10, 8, 14]
    mask = [10, 8, 5, 3, 5, 6, 4, 9]
    assert balanced_partitions(generated, 2, True) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    plan = verl_update_plan(generated, generated, mask, world_size=2, minibatches=2, max_token_len=100)
    assert [s.rows for s in plan] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert plan[0].coef == pytest.approx([1 / 36, 1 / 36, 1 / 22, 1 / 22])
    assert plan[1].coef == pytest.approx([1 / 16, 1 / 16, 1 / 26, 1 / 26])
    with pytest.raises(ValueError, match="do not split"):
        verl_update_plan(generated[:6], generated[:6], mask[:6], 2, 2, 100)
    with pytest.raises(ValueError, match="exceeds the micro-batch budget"):
        verl_update_plan(generated, generated, mask, 2, 1, 15)


def test_balance_batch_switch_by_hand():
    """[40, 38, 5, 4] over 2 GPUs: balanced {0, 3} (44 tokens) / {1, 2} (43); contiguous {0, 1} / {2, 3}."""
    lengths, mask = [40, 38, 5, 4], [10, 8, 3, 2]
    (balanced,) = verl_update_plan(lengths, lengths, mask, 2, 1, 100)
    assert balanced.coef == pytest.approx([1 / 24, 1 / 22, 1 / 22, 1 / 24])
    (contiguous,) = verl_update_plan(lengths, lengths, mask, 2, 1, 100, balance_batch=False)
    assert contiguous.coef == pytest.approx([1 / 36, 1 / 36, 1 / 10, 1 / 10])
