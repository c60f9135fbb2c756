"""The loop's update path: context distillation on x, each ablation switch, zero-advantage row skipping.

The Trainer runs here over `TorchPolicy` (a real transformers backend with the PolicyBackend contract) and
the real verifier; the Megatron backend is exercised by the end-to-end test.
"""
from __future__ import annotations

import copy
from pathlib import Path
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
from p2o.train.distributed_control import ProcessGroupControl
from p2o.train.loop import Trainer
from p2o.train.policy import SequenceBatch
from p2o.train.rows import TrainRow
from p2o.train.runtime import Runtime

PROBLEMS = [Problem("p0", "What is 2 + 2?", "4"), Problem("p1", "What is 3 + 5?", "8")]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def verifier():
    with Verifier(load_config().reward) as v:
        yield v


def _trainer(tiny_model_dir, verifier, overrides=(), reference=None):
    cfg = load_config(None, ["model.path=tiny-qwen3", "rollout.n=2", "rollout.prompts_per_step=2",
                             "grpo.ppo_minibatches=1", "optim.lr=1e-3", *overrides])
    parts = Runtime(run_dir=Path("."), control=ProcessGroupControl.single(), policy=TorchPolicy(tiny_model_dir),
                    rollout=SimpleNamespace(verify=verifier.score_many),
                    metrics=SimpleNamespace(progress=lambda desc, total: make_bar(desc, total, enabled=False)),
                    train_problems=PROBLEMS, reference=reference)
    return Trainer(cfg, parts)


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
    tokens = trainer._old_logprobs(rows, metrics)
    metrics.update(trainer._update(rows, tokens))
    return metrics, tokens


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
    reference = copy.deepcopy(t.policy)
    _step(t, rows)
    (batch,) = t.policy.calls
    assert batch.prompt_ids == [r.train_prompt_ids for r in rows]
    direct = SequenceBatch([prompts.encode(tok, prompts.messages(PROBLEMS[int(r.problem_id[1])].question)) for r in rows],
                           [r.response_ids for r in rows])
    assert direct.prompt_ids == batch.prompt_ids
    old = reference.logprobs(direct)
    lens = [len(r) for r in direct.response_ids]
    adv = torch.cat([torch.full((n,), r.advantage) for n, r in zip(lens, rows, strict=False)])
    w = token_weights(lens, "token-mean", len(rows), sum(lens), t.cfg.rollout.max_new_tokens)
    reference.train_step(direct, {"old_logprobs": old, "advantages": adv, "weights": w}, make_loss_fn(t.cfg.grpo))
    for name, g in t.policy.last_grads.items():
        assert torch.allclose(g, reference.last_grads[name], atol=1e-6), name


@pytest.mark.parametrize("mode", ["ratio_mask", "replace_prompts", "fix_importance_ratio"])
def test_distill_switch_changes_only_templated_rows(tiny_model_dir, verifier, tok, mode):
    base = _trainer(tiny_model_dir, verifier, ["p2o.distill=replace_prompts"])
    t = _trainer(tiny_model_dir, verifier, [f"p2o.distill={mode}"])
    rows_a, rows_b = _rows(tok), _rows(tok)
    # A random tiny model barely depends on the context: put the mask's lower bound at the median ratio.
    lp_x = t.policy.logprobs(SequenceBatch([r.train_prompt_ids for r in rows_b[:2]], [r.response_ids for r in rows_b[:2]]))
    lp_xz = t.policy.logprobs(SequenceBatch([r.gen_prompt_ids for r in rows_b[:2]], [r.response_ids for r in rows_b[:2]]))
    t.cfg.p2o.ratio_low = float(torch.exp((lp_x - lp_xz).median()))
    base._score_and_mine(rows_a, PROBLEMS)
    t._score_and_mine(rows_b, PROBLEMS)
    a, b = base._old_logprobs(rows_a, {}), t._old_logprobs(rows_b, {})
    old_a, mask_a, old_b, mask_b = a.old, a.mask, b.old, b.mask
    n_templ = sum(len(r.response_ids) for r in rows_a[:2])
    assert torch.equal(old_a[n_templ:], old_b[n_templ:]) and torch.equal(mask_a[n_templ:], mask_b[n_templ:])
    if mode == "replace_prompts":
        assert torch.equal(old_a, old_b) and torch.equal(mask_a, mask_b)
    if mode == "ratio_mask":  # narrow bounds: some templated tokens masked, old log-probs unchanged
        assert torch.equal(old_a, old_b) and 0 < mask_b[:n_templ].sum() < n_templ
    if mode == "fix_importance_ratio":  # old log-probs on x+z for templated tokens, no mask
        assert not torch.allclose(old_a[:n_templ], old_b[:n_templ]) and torch.equal(mask_a, mask_b)
        lp_xz = t.policy.logprobs(SequenceBatch([r.gen_prompt_ids for r in rows_b[:2]], [r.response_ids for r in rows_b[:2]]))
        assert torch.allclose(old_b[:n_templ], lp_xz)


def test_drop_failed_template_rollouts(tiny_model_dir, verifier, tok):
    """The failed templated rollout leaves the loss and the normaliser (the released code zeroes its response
    mask), but still counts in its group's advantages: the gradient equals a token-mean over the other rows."""
    t = _trainer(tiny_model_dir, verifier, ["p2o.drop_failed_template_rollouts=true", "p2o.distill=replace_prompts"])
    rows = _rows(tok)
    reference = copy.deepcopy(t.policy)
    metrics, tokens = _step(t, rows)
    assert tokens.keep.tolist() == [True, False, True, True]  # only the failed templated rollout is dropped
    assert metrics["dropped_rows"] == 1 and metrics["skipped_rows"] == 1
    assert rows[0].advantage == pytest.approx(1 / (2 ** 0.5 + 1e-6))  # group {1, 0}: the dropped row counts here
    (batch,) = t.policy.calls
    assert batch.response_ids == [rows[i].response_ids for i in (0, 2, 3)]
    # By hand: token-mean over the three kept rows only.
    kept = [rows[i] for i in (0, 2, 3)]
    direct = SequenceBatch([r.train_prompt_ids for r in kept], [r.response_ids for r in kept])
    lens = [len(r.response_ids) for r in kept]
    w = torch.full((sum(lens),), 1.0 / sum(lens))
    adv = torch.cat([torch.full((n,), r.advantage) for n, r in zip(lens, kept, strict=True)])
    reference.train_step(direct, {"old_logprobs": reference.logprobs(direct), "advantages": adv, "weights": w},
                         make_loss_fn(t.cfg.grpo))
    for name, g in t.policy.last_grads.items():
        assert torch.allclose(g, reference.last_grads[name], atol=1e-6), name


def test_without_context_distillation_templated_rows_train_on_x_plus_z(tiny_model_dir, verifier, tok):
    """p2o.distill=none (the paper's "w/o context distillation" row): plan_requests gives templated rollouts their
    generation prompt x+z as training context; old log-probs, loss and mask are all on x+z (no dual pass,
    mask 1), and the gradient equals a plain GRPO step on the (x+z, y) rows."""
    from p2o.train.rows import plan_requests

    t = _trainer(tiny_model_dir, verifier, ["p2o.distill=none", "grpo.skip_old_logprob_pass=false"])
    z = "Count on your fingers."
    planned = plan_requests(t.cfg, tok, PROBLEMS, {"p0": [z, z]}, step=1)
    xz0 = prompts.encode(tok, prompts.messages(PROBLEMS[0].question, z))
    x1 = prompts.encode(tok, prompts.messages(PROBLEMS[1].question))
    assert [(p.template, p.request.prompt_ids, p.train_prompt_ids) for p in planned] == [
        (z, xz0, xz0), (z, xz0, xz0), ("", x1, x1)]
    distilled = plan_requests(_trainer(tiny_model_dir, verifier).cfg, tok, PROBLEMS, {"p0": [z, z]}, step=1)
    assert distilled[0].train_prompt_ids != distilled[0].request.prompt_ids  # the default trains on x

    rows = _rows(tok)
    for r in rows[:2]:
        r.train_prompt_ids = list(r.gen_prompt_ids)  # what to_rows builds from the plan above
    assert not any(r.distilled for r in rows)
    reference = copy.deepcopy(t.policy)
    t.policy.dual_logprobs = lambda *a: pytest.fail("no dual-context pass without distillation")
    metrics, tokens = _step(t, rows)
    assert "mask_rate" not in metrics and torch.equal(tokens.mask, torch.ones_like(tokens.mask))
    on_xz = SequenceBatch([r.gen_prompt_ids for r in rows], [r.response_ids for r in rows])
    torch.testing.assert_close(tokens.old, reference.logprobs(on_xz), rtol=0, atol=1e-6)
    (batch,) = t.policy.calls
    assert batch.prompt_ids == on_xz.prompt_ids
    lens = [len(r) for r in on_xz.response_ids]
    adv = torch.cat([torch.full((n,), r.advantage) for n, r in zip(lens, rows, strict=True)])
    w = token_weights(lens, "token-mean", len(rows), sum(lens), t.cfg.rollout.max_new_tokens)
    reference.train_step(on_xz, {"old_logprobs": reference.logprobs(on_xz), "advantages": adv, "weights": w},
                         make_loss_fn(t.cfg.grpo))
    for name, g in t.policy.last_grads.items():
        assert torch.allclose(g, reference.last_grads[name], atol=1e-6), name


def test_kl_term_uses_the_frozen_reference_on_the_training_context(tiny_model_dir, verifier, tok):
    """grpo.kl_coef > 0: the reference (a frozen copy of the initial weights) scores every row on its training
    context x, zero-advantage rows are trained (the KL pulls them), and the step's loss equals
    sum_t w_t (PPO_t + kl_coef k3_t) computed by hand in float64 from the policy's and the reference's log-probs."""
    cfg_kl = ["grpo.kl_coef=0.5", "grpo.kl_type=k3", "grpo.ppo_epochs=2", "p2o.distill=replace_prompts",
              "grpo.dual_clip=0"]
    with pytest.raises(ValueError, match="needs a reference policy"):
        _trainer(tiny_model_dir, verifier, cfg_kl)
    frozen = TorchPolicy(tiny_model_dir)  # the initial weights, never stepped
    t = _trainer(tiny_model_dir, verifier, cfg_kl, reference=frozen)
    rows = _rows(tok)
    rows[3].text = "So \\boxed{8}"  # p1 all correct: a zero-advantage group
    metrics = t._score_and_mine(rows, PROBLEMS)
    assert rows[2].advantage == rows[3].advantage == 0
    on_x = SequenceBatch([r.train_prompt_ids for r in rows], [r.response_ids for r in rows])
    tokens = t._old_logprobs(rows, metrics)
    torch.testing.assert_close(tokens.ref, frozen.logprobs(on_x), rtol=0, atol=0)
    seen = []
    real_step = t.policy.train_step

    def step(batch, inputs, loss_fn):  # record the policy's log-probs before each optimizer step
        seen.append((t.policy.logprobs(batch).double(), {k: v.double() for k, v in inputs.items()}))
        return real_step(batch, inputs, loss_fn)

    t.policy.train_step = step
    update = t._update(rows, tokens)
    assert update["optimizer_steps"] == 2 and update["skipped_rows"] == 0  # zero-advantage rows still learn
    assert len(seen[0][0]) == on_x.num_response_tokens
    # PPO epoch 2 runs on moved weights: the KL term is non-zero there. Recompute both epochs' losses by hand.
    total = 0.0
    for lp, i in seen:
        ratio = torch.exp(lp - i["old_logprobs"])
        a = i["advantages"]
        pg = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2))
        d = i["ref_logprobs"] - lp
        total += float((i["weights"] * (pg + 0.5 * (torch.exp(d) - d - 1))).sum())
    kl2 = seen[1][1]["ref_logprobs"] - seen[1][0]
    assert float((torch.exp(kl2) - kl2 - 1).max()) > 1e-4  # epoch 2's policy has moved away from the reference
    assert update["loss"] == pytest.approx(total, rel=1e-5)
    assert update["kl_mean"] > 0
    torch.testing.assert_close(frozen.logprobs(on_x), tokens.ref, rtol=0, atol=0)  # the reference never moves


def test_verl_dynamic_bsz_weights_in_the_loop(tiny_model_dir, verifier, tok):
    """grpo.verl_dynamic_bsz with 2 emulated GPUs and a budget that fits each GPU's rows in one micro-batch:
    w_t = (1/2) (2/2) / (mask tokens of the GPU's rows). Row 1 gets a longer generation prompt (another template),
    so balance_batch on the generated lengths pairs {1, 2} and {0, 3} (by prompt + response as trained it would
    pair {0, 2} and {1, 3}); row 1 is a failed templated rollout and is dropped (mask 0)."""
    t = _trainer(tiny_model_dir, verifier, ["grpo.verl_dynamic_bsz=true", "grpo.verl_world_size=2",
                                            "grpo.verl_max_token_len_per_gpu=576", "p2o.drop_failed_template_rollouts=true",
                                            "p2o.distill=replace_prompts"])
    rows = _rows(tok)
    rows[1].gen_prompt_ids = rows[1].gen_prompt_ids + rows[1].gen_prompt_ids[-20:]
    gen = [len(r.gen_prompt_ids) + len(r.response_ids) for r in rows]
    train = [len(r.train_prompt_ids) + len(r.response_ids) for r in rows]
    assert sorted(range(4), key=lambda i: (gen[i], i)) == [2, 3, 0, 1]  # pairs (smallest, largest) = {2, 1}
    assert sorted(range(4), key=lambda i: (train[i], i))[::3] == [2, 0]  # as trained it would be {2, 0}
    seen = []
    real_step = t.policy.train_step
    t.policy.train_step = lambda batch, inputs, fn: seen.append((batch, inputs)) or real_step(batch, inputs, fn)
    _step(t, rows)
    ((batch, inputs),) = seen
    assert batch.response_ids == [rows[i].response_ids for i in (0, 2, 3)]  # row 1 dropped, skipped
    n = [len(r.response_ids) for r in rows]
    want = torch.cat([torch.full((n[0],), 1 / (2 * (n[0] + n[3]))), torch.full((n[2],), 1 / (2 * n[2])),
                      torch.full((n[3],), 1 / (2 * (n[0] + n[3])))])
    torch.testing.assert_close(inputs["weights"], want, rtol=1e-6, atol=0)


def test_skipping_zero_advantage_rows_keeps_the_gradient(tiny_model_dir, verifier, tok):
    grads = {}
    for skip in (True, False):
        t = _trainer(tiny_model_dir, verifier, [f"train.skip_zero_advantage_rows={str(skip).lower()}"])
        rows = _rows(tok)
        rows[3].text = "So \\boxed{8}"  # p1 all correct: a zero-advantage group
        _step(t, rows)
        grads[skip] = t.policy.last_grads
        assert len(t.policy.calls[0]) == (2 if skip else 4)
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
        plain_pass = t.policy.logprobs
        t.policy.logprobs = lambda batch, f=plain_pass, seen=scored: seen.append(batch) or f(batch)
        rows = _rows(tok)
        metrics = t._score_and_mine(rows, PROBLEMS)
        tokens = t._old_logprobs(rows, metrics)
        update = t._update(rows, tokens)
        n_templ = sum(len(r.response_ids) for r in rows[:2])
        runs[skip] = (t.policy.last_grads, tokens.on_policy, scored, update)
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
    tokens = t._old_logprobs(rows, metrics)
    old = tokens.old
    n_templ = sum(len(r.response_ids) for r in rows[:2])
    assert not tokens.on_policy.any()
    plain = SequenceBatch([r.train_prompt_ids for r in rows[2:]], [r.response_ids for r in rows[2:]])
    assert torch.allclose(old[n_templ:], t.policy.logprobs(plain))


def test_templated_this_epoch_counts_only_problems_with_a_non_empty_template(tiny_model_dir, verifier):
    """The epoch-end plain-prompt evaluation of the templated hard samples: set cover may assign a hard sample
    only the empty template, which rolls it out plain, so it is not one of them."""
    t = _trainer(tiny_model_dir, verifier)
    t.state.prev_hard = ["p0", "p1"]
    t.state.assignment = {"p0": ["Count on your fingers.", ""], "p1": ["", " "]}
    assert [p.id for p in t._templated_this_epoch()] == ["p0"]
    t.state.prev_hard = ["p1"]  # p0 was not hard last epoch: its assignment is not active
    assert t._templated_this_epoch() == []
