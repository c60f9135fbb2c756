"""GRPO math against plain-Python references."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from p2o.algo.grpo import (
    GRPOLoss,
    clipped_policy_loss,
    group_advantages,
    kl_penalty,
    make_loss_fn,
    token_weights,
    zero_variance_groups,
)
from p2o.config import GRPOConfig
from p2o.policy_api import HiddenStateLoss


def _ref_adv(rewards, groups, eps=1e-6):
    """verl's compute_grpo_outcome_advantage: a singleton group has mean 0 and std 1."""
    out = []
    for r, g in zip(rewards, groups, strict=False):
        members = [x for x, h in zip(rewards, groups, strict=False) if h == g]
        if len(members) == 1:
            out.append(r / (1.0 + eps))
            continue
        out.append((r - statistics.mean(members)) / (statistics.stdev(members) + eps))
    return out


def test_group_advantages_variable_groups_and_singletons():
    g = torch.Generator().manual_seed(0)
    groups = [3, 3, 3, 7, 7, 1, 9, 9, 9, 9, 4]  # sizes 3, 2, 1, 4, 1 and unsorted labels
    rewards = torch.rand(len(groups), generator=g).round()
    adv = group_advantages(rewards, torch.tensor(groups))
    assert torch.allclose(adv.double(), torch.tensor(_ref_adv(rewards.tolist(), groups), dtype=torch.float64), atol=1e-5)
    assert adv[5] == pytest.approx(rewards[5] / (1 + 1e-6)) and adv[10] == pytest.approx(rewards[10] / (1 + 1e-6))


def test_singleton_group_gets_its_raw_reward_as_in_verl():
    """Hand-computed: group a = {1, 0} (mean 1/2, unbiased std 1/sqrt 2), group b = {1} (mean 0, std 1)."""
    r, ids = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1])
    s = math.sqrt(0.5)
    assert torch.allclose(group_advantages(r, ids, "group"),
                          torch.tensor([0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 1 / (1 + 1e-6)]), atol=1e-7)
    assert torch.allclose(group_advantages(r, ids, "none"), torch.tensor([0.5, -0.5, 1.0]))
    std = float(r.std())  # batch std over all rewards
    assert torch.allclose(group_advantages(r, ids, "batch"), torch.tensor([0.5, -0.5, 1.0]) / (std + 1e-6))
    assert torch.allclose(group_advantages(torch.tensor([0.0]), torch.tensor([3])), torch.tensor([0.0]))


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_advantages_agree_with_the_kernel(norm):
    """The loop's advantages and `kernels.grouped_advantages` follow one convention (singletons included)."""
    from kernels import grouped_advantages

    g = torch.Generator().manual_seed(5)
    groups = torch.tensor([4, 4, 4, 9, 2, 2, 7, 7, 7, 7, 1])  # two singletons (9 and 1)
    rewards = torch.rand(len(groups), generator=g).round()
    torch.testing.assert_close(group_advantages(rewards, groups, norm),
                               grouped_advantages(rewards, groups, norm, backend="torch"), atol=1e-6, rtol=1e-6)


def test_zero_variance_groups_have_zero_advantage():
    rewards = torch.tensor([0.0, 0, 0, 1, 0, 1])
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    assert torch.all(group_advantages(rewards, ids)[:3] == 0)
    assert zero_variance_groups(rewards, ids).tolist() == [True, False]


def test_adv_norm_modes():
    r, ids = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 0, 1, 1])
    assert torch.allclose(group_advantages(r, ids, "none"), torch.tensor([0.5, -0.5, 0, 0]))
    batch = group_advantages(r, ids, "batch")
    assert torch.allclose(batch, torch.tensor([0.5, -0.5, 0, 0]) / (r.std() + 1e-6))
    with pytest.raises(ValueError, match="adv_norm"):
        group_advantages(r, ids, "median")


def _ref_token_loss(lp, old, a, lo, hi, c):
    ratio = math.exp(lp - old)
    loss = max(-a * ratio, -a * min(max(ratio, 1 - lo), 1 + hi))
    if c and a < 0:
        loss = min(loss, -a * c)
    return loss


def test_clipped_dual_clip_loss_matches_reference():
    g = torch.Generator().manual_seed(1)
    lp, old = torch.randn(200, generator=g) * 0.5 - 1, torch.randn(200, generator=g) * 0.5 - 1
    adv = torch.randn(200, generator=g)
    out = clipped_policy_loss(lp, old, adv, 0.2, 0.28, 3.0).loss
    ref = torch.tensor([_ref_token_loss(*x, 0.2, 0.28, 3.0) for x in zip(lp.tolist(), old.tolist(), adv.tolist(), strict=False)])
    assert torch.allclose(out, ref, atol=1e-5)
    no_dual = clipped_policy_loss(lp, old, adv, 0.2, 0.28, 0.0).loss
    assert (no_dual >= out - 1e-6).all() and (no_dual > out + 1e-6).any()


def test_token_weights_modes():
    lens = [2, 3]
    w = token_weights(lens, "token-mean", num_sequences=4, num_tokens=10, max_new_tokens=8)
    assert torch.allclose(w, torch.full((5,), 0.1))
    w = token_weights(lens, "seq-mean-token-mean", 4, 10, 8)
    assert torch.allclose(w, torch.tensor([1 / 8, 1 / 8, 1 / 12, 1 / 12, 1 / 12]))
    w = token_weights(lens, "seq-mean-token-sum-norm", 4, 10, 8)
    assert torch.allclose(w, torch.full((5,), 1 / 32))


def test_loss_fn_gradient_equals_weighted_reference():
    cfg = GRPOConfig(clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    g = torch.Generator().manual_seed(2)
    lp = (torch.randn(12, generator=g) - 1).requires_grad_()
    inputs = {"old_logprobs": lp.detach() + 0.1 * torch.randn(12, generator=g), "advantages": torch.randn(12, generator=g),
              "weights": torch.rand(12, generator=g) * (torch.rand(12, generator=g) > 0.3)}
    loss, metrics = make_loss_fn(cfg)(lp, inputs)
    loss.backward()
    lp2 = lp.detach().clone().requires_grad_()
    ref = sum(inputs["weights"][i] * clipped_policy_loss(lp2[i:i + 1], inputs["old_logprobs"][i:i + 1],
                                                         inputs["advantages"][i:i + 1], 0.2, 0.2, 3.0).loss[0]
              for i in range(12))
    ref.backward()
    assert torch.allclose(lp.grad, lp2.grad, atol=1e-6) and metrics["active_tokens"] == float((inputs["weights"] > 0).sum())


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert torch.allclose(kl_penalty(lp, ref, "k1"), lp - ref)
    d = ref - lp
    assert torch.allclose(kl_penalty(lp, ref, "k3"), torch.exp(d) - d - 1)
    assert (kl_penalty(lp, ref, "k3") >= 0).all()


def test_kl_term_value_and_gradient_hand_computed():
    """GRPOLoss with zero advantages is kl_coef * sum_t w_t KL_t; values and d/dlogp by hand (d = ref - logp):
    k3 = e^d - d - 1 (clamped to 10, as verl's low_var_kl: zero gradient there), d k3/d logp = 1 - e^d."""
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    ref = torch.tensor([-1.5, -1.0, 2.5, -3.0])  # d = -0.5, 1, 3, 0
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    e = math.e
    cases = {"k3": ([e ** -0.5 - 0.5, e - 2, 10.0, 0.0], [1 - e ** -0.5, 1 - e, 0.0, 0.0]),
             "k1": ([0.5, -1.0, -3.0, 0.0], [1.0, 1.0, 1.0, 1.0])}
    for kind, (kl, dkl) in cases.items():
        loss_fn = make_loss_fn(GRPOConfig(kl_coef=0.05, kl_type=kind))
        lp = logp.clone().requires_grad_()
        inputs = {"old_logprobs": logp, "advantages": torch.zeros(4), "weights": w, "ref_logprobs": ref}
        loss, metrics = loss_fn(lp, inputs)
        loss.backward()
        assert loss.item() == pytest.approx(0.05 * sum(a * b for a, b in zip(w.tolist(), kl, strict=True)), rel=1e-6)
        torch.testing.assert_close(lp.grad, 0.05 * w * torch.tensor(dkl), rtol=1e-6, atol=1e-8)
        assert metrics["kl_sum"] == pytest.approx(sum(kl), rel=1e-6) and metrics["pg_loss"] == 0.0


def test_grpo_loss_checks_its_parameters():
    """`GRPOLoss` is the one place the loss's numbers are defined; bad values name the grpo key."""
    GRPOLoss(0.2, 0.28, 3.0, kl_coef=0.1, kl_type="k1")  # valid
    for kwargs, key in [(dict(dual_clip=0.5), "grpo.dual_clip"), (dict(clip_low=1.0), "grpo.clip_low"),
                        (dict(clip_high=-0.1), "grpo.clip_high"), (dict(kl_coef=float("nan")), "grpo.kl_coef"),
                        (dict(kl_type="k2"), "grpo.kl_type")]:
        with pytest.raises(ValueError, match=key):
            GRPOLoss(**{"clip_low": 0.2, "clip_high": 0.2, **kwargs})
    cfg = GRPOConfig(clip_low=0.1, clip_high=0.3, dual_clip=2.0, kl_coef=0.02, kl_type="k1")
    assert GRPOLoss.from_config(cfg).knobs() == dict(clip_low=0.1, clip_high=0.3, dual_clip=2.0, kl_coef=0.02,
                                                     kl_type="k1")


@pytest.mark.parametrize("loss_fn", [GRPOLoss(0.2, 0.28, 3.0), GRPOLoss(0.2, 0.2, 0.0, kl_coef=0.1, kl_type="k3")],
                         ids=["dual-clip", "kl-k3"])
def test_loss_from_hidden_equals_the_loss_on_logprobs(loss_fn):
    """The capability the backends ask for: `loss_from_hidden` (the fused kernel, torch backend) gives the loss,
    gradients and metrics of calling the loss on log_softmax(hidden @ weight.T / temperature)[targets]."""
    assert isinstance(loss_fn, HiddenStateLoss)
    assert not isinstance(lambda logprobs, inputs: (logprobs.sum(), {}), HiddenStateLoss)
    T, H, V, temp = 29, 16, 97, 0.7
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * H ** -0.5 * 3
    targets = torch.randint(0, V, (T,), generator=g)
    with torch.no_grad():
        cur = torch.log_softmax(hidden @ weight.T / temp, -1).gather(1, targets[:, None])[:, 0].float()
    inputs = {"old_logprobs": cur + 0.4 * torch.randn(T, generator=g), "advantages": torch.randn(T, generator=g),
              "weights": torch.rand(T, generator=g) * (torch.rand(T, generator=g) > 0.2) / T,
              "ref_logprobs": cur + 0.3 * torch.randn(T, generator=g), "on_policy": torch.arange(T) % 4 == 0}

    h1, w1 = hidden.float().requires_grad_(), weight.float().requires_grad_()
    loss1, m1 = loss_fn.loss_from_hidden(h1, w1, targets, inputs, temperature=temp, backend="torch")
    loss1.backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logprobs = torch.log_softmax(h2 @ w2.T / temp, -1).gather(1, targets[:, None])[:, 0]
    loss2, m2 = loss_fn(logprobs, {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()})
    loss2.backward()
    torch.testing.assert_close(loss1.double(), loss2.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h1.grad.double(), h2.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w1.grad.double(), w2.grad, atol=1e-6, rtol=1e-5)
    assert m1.keys() == m2.keys()
    for k in m1:
        assert m1[k] == pytest.approx(m2[k], rel=1e-5, abs=1e-6), k
