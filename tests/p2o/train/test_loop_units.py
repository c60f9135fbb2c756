"""The loop's update path: context distillation on x, each ablation switch, zero-advantage row skipping.

The Trainer runs here over `TorchPolicy` (a real transformers backend with the PolicyBackend contract) and
the real verifier; the Megatron backend is exercised by the end-to-end test.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch_policy import TorchPolicy  # noqa: E402  (tests/p2o/train is on sys.path)
from transformers import AutoTokenizer

from p2o import prompts
from p2o.algo.grpo import make_loss_fn, token_weights
from p2o.config import load_config
from p2o.data.problem import Problem
from p2o.reward import Verifier
from p2o.telemetry.progress import make_bar
from p2o.train.loop import Trainer
from p2o.train.policy import SequenceBatch
from p2o.train.rows import TrainRow

PROBLEMS = [Problem("p0", "What is 2 + 2?", "4"), Problem("p1", "What is 3 + 5?", "8")]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def verifier():
    with Verifier(load_config().reward) as v:
        yield v


def _trainer(tiny_model_dir, verifier, overrides=()):
    cfg = load_config(None, ["model.path=tiny-qwen3", "rollout.n=2", "rollout.prompts_per_step=2",
                             "grpo.ppo_minibatches=1", "optim.lr=1e-3", *overrides])
    rt = SimpleNamespace(train_problems=PROBLEMS, policy=TorchPolicy(tiny_model_dir), is_rank0=True,
                         progress=lambda desc, total: make_bar(desc, total, enabled=False),
                         verify=verifier.score_many)
    return Trainer(cfg, rt)


def _rows(tok):
    """p0: two templated rollouts (one correct); p1: two plain rollouts (one correct)."""
    x0 = prompts.encode(tok, prompts.messages(PROBLEMS[0].question))
    xz0 = prompts.encode(tok, prompts.messages(PROBLEMS[0].question, "Count on your fingers."))
    x1 = prompts.encode(tok, prompts.messages(PROBLEMS[1].question))
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    texts = ["The sum is \\boxed{4}.", "It is \\boxed{5}.", "So \\boxed{8}", "I think \\boxed{9}"]
    ctx = [(x0, xz0, "Count on your fingers."), (x0, xz0, "Count on your fingers."), (x1, x1, ""), (x1, x1, "")]
    return [TrainRow(f"p{i // 2}", i // 2, x, g, ids(t), t, "stop", z, 0) for i, ((x, g, z), t) in enumerate(zip(ctx, texts, strict=False))]


def _step(trainer, rows):
    metrics = trainer._score_and_mine(rows, PROBLEMS)
    old, on_policy, mask, scale = trainer._old_logprobs(rows, metrics)
    trainer._update(rows, old, on_policy, mask, scale)
    return metrics, old, mask, scale


def test_rewards_advantages_and_mining(tiny_model_dir, verifier, tok):
    t = _trainer(tiny_model_dir, verifier, ["p2o.tau=1"])
    rows = _rows(tok)
    m = t._score_and_mine(rows, PROBLEMS)
    assert [r.reward for r in rows] == [1.0, 0.0, 1.0, 0.0]
    assert rows[0].advantage > 0 > rows[1].advantage
    assert m["templated_share"] == 0.5 and m["templated_success"] == 0.5
    assert len(t.hard) == 0  # tau=1: hard only when no rollout is correct
    t2 = _trainer(tiny_model_dir, verifier, ["p2o.tau=2", "rollout.n=2"])
    rows = _rows(tok)
    for r in rows:
        r.text = "no box"
    t2._score_and_mine(rows, PROBLEMS)
    assert set(t2.hard.samples) == {"p0", "p1"}


def test_loss_is_computed_on_x(tiny_model_dir, verifier, tok):
    """The gradient of the loop's update equals the one from a batch built directly from the x contexts."""
    t = _trainer(tiny_model_dir, verifier, ["p2o.distill=replace_prompts"])
    rows = _rows(tok)
    reference = copy.deepcopy(t.rt.policy)
    _step(t, rows)
    (batch,) = t.rt.policy.calls
    assert batch.prompt_ids == [r.train_prompt_ids for r in rows]
    direct = SequenceBatch([prompts.encode(tok, prompts.messages(PROBLEMS[int(r.problem_id[1])].question)) for r in rows],
                           [r.response_ids for r in rows])
    assert direct.prompt_ids == batch.prompt_ids
    old = reference.logprobs(direct)
    lens = [len(r) for r in direct.response_ids]
    adv = torch.cat([torch.full((n,), r.advantage) for n, r in zip(lens, rows, strict=False)])
    w = token_weights(lens, "token-mean", len(rows), sum(lens), t.cfg.rollout.max_new_tokens)
    reference.train_step(direct, {"old_logprobs": old, "advantages": adv, "weights": w}, make_loss_fn(t.cfg.grpo))
    for name, g in t.rt.policy.last_grads.items():
        assert torch.allclose(g, reference.last_grads[name], atol=1e-6), name


@pytest.mark.parametrize("mode", ["ratio_mask", "replace_prompts", "fix_importance_ratio"])
def test_distill_switch_changes_only_templated_rows(tiny_model_dir, verifier, tok, mode):
    base = _trainer(tiny_model_dir, verifier, ["p2o.distill=replace_prompts"])
    t = _trainer(tiny_model_dir, verifier, [f"p2o.distill={mode}"])
    rows_a, rows_b = _rows(tok), _rows(tok)
    # A random tiny model barely depends on the context: put the mask's lower bound at the median ratio.
    lp_x = t.rt.policy.logprobs(SequenceBatch([r.train_prompt_ids for r in rows_b[:2]], [r.response_ids for r in rows_b[:2]]))
    lp_xz = t.rt.policy.logprobs(SequenceBatch([r.gen_prompt_ids for r in rows_b[:2]], [r.response_ids for r in rows_b[:2]]))
    t.cfg.p2o.ratio_low = float(torch.exp((lp_x - lp_xz).median()))
    base._score_and_mine(rows_a, PROBLEMS)
    t._score_and_mine(rows_b, PROBLEMS)
    old_a, _, mask_a, _ = base._old_logprobs(rows_a, {})
    old_b, _, mask_b, _ = t._old_logprobs(rows_b, {})
    n_templ = sum(len(r.response_ids) for r in rows_a[:2])
    assert torch.equal(old_a[n_templ:], old_b[n_templ:]) and torch.equal(mask_a[n_templ:], mask_b[n_templ:])
    if mode == "replace_prompts":
        assert torch.equal(old_a, old_b) and torch.equal(mask_a, mask_b)
    if mode == "ratio_mask":  # narrow bounds: some templated tokens masked, old log-probs unchanged
        assert torch.equal(old_a, old_b) and 0 < mask_b[:n_templ].sum() < n_templ
    if mode == "fix_importance_ratio":  # old log-probs on x+z for templated tokens, no mask
        assert not torch.allclose(old_a[:n_templ], old_b[:n_templ]) and torch.equal(mask_a, mask_b)
        lp_xz = t.rt.policy.logprobs(SequenceBatch([r.gen_prompt_ids for r in rows_b[:2]], [r.response_ids for r in rows_b[:2]]))
        assert torch.allclose(old_b[:n_templ], lp_xz)


def test_drop_failed_template_rollouts(tiny_model_dir, verifier, tok):
    t = _trainer(tiny_model_dir, verifier, ["p2o.drop_failed_template_rollouts=true"])
    rows = _rows(tok)
    t._score_and_mine(rows, PROBLEMS)
    _, _, _, scale = t._old_logprobs(rows, {})
    assert scale.tolist() == [1.0, 0.0, 1.0, 1.0]  # only the failed templated rollout is dropped


def test_skipping_zero_advantage_rows_keeps_the_gradient(tiny_model_dir, verifier, tok):
    grads = {}
    for skip in (True, False):
        t = _trainer(tiny_model_dir, verifier, [f"train.skip_zero_advantage_rows={str(skip).lower()}"])
        rows = _rows(tok)
        rows[3].text = "So \\boxed{8}"  # p1 all correct: a zero-advantage group
        _step(t, rows)
        grads[skip] = t.rt.policy.last_grads
        assert len(t.rt.policy.calls[0]) == (2 if skip else 4)
    for name, g in grads[True].items():
        assert torch.allclose(g, grads[False][name], atol=1e-7), name


def test_stale_async_assignment_is_not_used(tiny_model_dir, verifier):
    t = _trainer(tiny_model_dir, verifier, ["p2o.gepa_mode=async", "p2o.max_staleness=2"])
    t.state.assignment, t.state.prev_hard, t.state.assignment_version = {"p0": ["a", "b"], "p9": ["c", "d"]}, ["p0"], 5
    t.state.policy_version = 7
    assert t._active_assignment() == {"p0": ["a", "b"]}  # only last epoch's hard samples
    t.state.policy_version = 8
    assert t._active_assignment() == {}
    off = _trainer(tiny_model_dir, verifier, ["p2o.enabled=false"])
    off.state.assignment, off.state.prev_hard = {"p0": ["a", "b"]}, ["p0"]
    assert off._active_assignment() == {}


def test_on_policy_update_skips_the_old_logprob_pass(tiny_model_dir, verifier, tok):
    """One optimizer step per batch: untemplated rows take their old log-probs from the update's forward
    (flagged, never scored beforehand); the gradient equals the one with a separate pass. Templated rows are
    still scored (their mask needs x and x+z)."""
    runs = {}
    for skip in (True, False):
        t = _trainer(tiny_model_dir, verifier, ["p2o.distill=replace_prompts",
                                                f"grpo.skip_old_logprob_pass={str(skip).lower()}"])
        scored = []
        plain_pass = t.rt.policy.logprobs
        t.rt.policy.logprobs = lambda batch, f=plain_pass, seen=scored: seen.append(batch) or f(batch)
        rows = _rows(tok)
        metrics = t._score_and_mine(rows, PROBLEMS)
        old, on_policy, mask, scale = t._old_logprobs(rows, metrics)
        update = t._update(rows, old, on_policy, mask, scale)
        n_templ = sum(len(r.response_ids) for r in rows[:2])
        runs[skip] = (t.rt.policy.last_grads, on_policy, scored, update)
    grads_skip, on_policy, scored, update = runs[True]
    assert not on_policy[:n_templ].any() and on_policy[n_templ:].all()
    assert [len(b) for b in scored] == [2, 2]  # the dual pass's two halves on the templated rows only
    assert [len(b) for b in runs[False][2]] == [2, 2, 2]  # plus the plain rows' own pass
    assert not runs[False][1].any()
    assert update["clip_frac"] == runs[False][3]["clip_frac"] == 0.0
    for name, g in grads_skip.items():
        assert torch.allclose(g, runs[False][0][name], atol=1e-6, rtol=1e-5), name


def test_several_optimizer_steps_keep_the_old_logprob_pass(tiny_model_dir, verifier, tok):
    """With two minibatches the second one's weights have moved: old log-probs must come from a separate pass."""
    t = _trainer(tiny_model_dir, verifier, ["grpo.ppo_minibatches=2"])
    rows = _rows(tok)
    metrics = t._score_and_mine(rows, PROBLEMS)
    old, on_policy, _, _ = t._old_logprobs(rows, metrics)
    n_templ = sum(len(r.response_ids) for r in rows[:2])
    assert not on_policy.any()
    plain = SequenceBatch([r.train_prompt_ids for r in rows[2:]], [r.response_ids for r in rows[2:]])
    assert torch.allclose(old[n_templ:], t.rt.policy.logprobs(plain))


def test_templated_this_epoch_counts_only_problems_with_a_non_empty_template(tiny_model_dir, verifier):
    """The epoch-end plain-prompt evaluation of the templated hard samples: set cover may assign a hard sample
    only the empty template, which rolls it out plain, so it is not one of them."""
    t = _trainer(tiny_model_dir, verifier)
    t.state.prev_hard = ["p0", "p1"]
    t.state.assignment = {"p0": ["Count on your fingers.", ""], "p1": ["", " "]}
    assert [p.id for p in t._templated_this_epoch()] == ["p0"]
    t.state.prev_hard = ["p1"]  # p0 was not hard last epoch: its assignment is not active
    assert t._templated_this_epoch() == []
