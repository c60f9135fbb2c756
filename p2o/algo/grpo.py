"""GRPO: group advantages, the clipped (dual-clip) policy-gradient loss and its aggregation.

Shapes: N rollouts, T packed response tokens (see p2o/policy_api.py). Everything is a pure function of
tensors; no distributed or global state.

Advantage (Shao et al., 2024):  A_i = (r_i - mean_g r) / (std_g r + eps) for rollout i in group g;
`adv_norm="batch"` divides by the std over the whole batch instead, `"none"` skips the division (Dr. GRPO).
std is the unbiased sample std (torch.std), as in verl. A singleton group has mean 0 and std 1, so its advantage
is its raw reward / (1 + eps) (verl's `compute_grpo_outcome_advantage`; same rule in `kernels.grouped_advantages`).

Per-token loss with ratio rho_t = exp(logp_t - old_logp_t):
  l_t = max(-A rho_t, -A clip(rho_t, 1 - clip_low, 1 + clip_high))        (PPO, Schulman et al., 2017)
  for A < 0 with dual clip c > 1:  l_t = min(l_t, -A c)                  (Ye et al., 2020)

Aggregation is a weighted sum  L = sum_t w_t l_t  with per-token weights fixed once per optimizer step
(`token_weights`), so micro-batching and data parallelism never change the normaliser:
  token-mean:               w_t = M_t / (unmasked tokens of the step)
  seq-mean-token-mean:      w_t = M_t / (len(seq_t) * sequences of the step)
  seq-mean-token-sum-norm:  w_t = M_t / (sequences of the step * max_new_tokens)   (Dr. GRPO)
M_t is the response mask; P2O's context-ratio mask multiplies w_t afterwards (masked tokens stay in the
denominator, as in the released P2O code).

This module is the one definition of GRPO's math and of the loss's parameters (`GRPOLoss`, built from
`p2o.config.GRPOConfig`). The Triton kernels (`kernels.grouped_advantages`, `kernels.fused_linear_grpo_loss`) are
backends of it: they take the same numbers and the weights w_t from here, and know nothing about `p2o`. A loss
that a backend can compute from hidden states says so through `p2o.policy_api.HiddenStateLoss`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from p2o.config import GRPOConfig


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, norm: str = "group",
                     eps: float = 1e-6) -> torch.Tensor:
    """Advantages [N] for rewards [N] grouped by integer `group_ids` [N] (any labels, variable group sizes)."""
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D shapes")
    r = rewards.double()
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    single = counts == 1  # verl: a singleton group has mean 0 and std 1
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inv, r)
    mean = torch.where(single, torch.zeros_like(sums), sums / counts)
    centred = r - mean[inv]
    if norm == "none":
        return centred.float()
    if norm == "group":
        sq = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inv, centred**2)
        std = torch.where(single, torch.ones_like(sq), torch.sqrt(sq / (counts - 1).clamp(min=1)))
        adv = centred / (std[inv] + eps)
    elif norm == "batch":
        std = r.std() if r.numel() > 1 else torch.tensor(1.0, dtype=torch.float64)
        adv = centred / (std + eps)
    else:
        raise ValueError(f"grpo.adv_norm: got {norm!r}; expected group, batch or none")
    return adv.float()


def zero_variance_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Bool [G] per unique group (sorted ids): all rewards of the group equal, i.e. advantage collapse."""
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    lo = torch.full((len(counts),), float("inf"), dtype=torch.float64).scatter_reduce(0, inv, rewards.double(), "amin")
    hi = torch.full((len(counts),), float("-inf"), dtype=torch.float64).scatter_reduce(0, inv, rewards.double(), "amax")
    return hi == lo


def token_weights(response_lens: list[int], mode: str, num_sequences: int, num_tokens: int,
                  max_new_tokens: int) -> torch.Tensor:
    """Packed weights [T] for `aggregate` given this rank's rows and the step's GLOBAL sequence/token counts."""
    lens = torch.tensor(response_lens, dtype=torch.float64)
    if mode == "token-mean":
        per_seq = torch.full_like(lens, 1.0 / max(num_tokens, 1))
    elif mode == "seq-mean-token-mean":
        per_seq = 1.0 / (lens.clamp(min=1) * max(num_sequences, 1))
    elif mode == "seq-mean-token-sum-norm":
        per_seq = torch.full_like(lens, 1.0 / (max(num_sequences, 1) * max_new_tokens))
    else:
        raise ValueError(f"grpo.loss_agg: got {mode!r}")
    return torch.repeat_interleave(per_seq, torch.tensor(response_lens)).float()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate (Schulman's k1/k3, as verl's kl_penalty "k1" / "low_var_kl"):
    k1 = logp - ref_logp;  k3 = min(exp(d) - d - 1, 10) with d = clamp(ref_logp - logp, -20, 20)."""
    if kind == "k1":
        return logprobs - ref_logprobs
    if kind == "k3":
        d = (ref_logprobs - logprobs).clamp(-20, 20)
        return (torch.exp(d) - d - 1).clamp(max=10)
    raise ValueError(f"grpo.kl_type: got {kind!r}; expected k1 or k3")


@dataclass
class PolicyLoss:
    """Per-token loss [T] and whether each token was clipped (for the clip fraction)."""

    loss: torch.Tensor
    clipped: torch.Tensor


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        clip_low: float, clip_high: float, dual_clip: float = 0.0) -> PolicyLoss:
    """The PPO/dual-clip surrogate per token (see module docstring); all inputs [T]."""
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20, 20))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip:
        dual = -advantages * dual_clip
        use_dual = (advantages < 0) & (loss > dual)
        loss = torch.where(use_dual, dual, loss)
        was_clipped = was_clipped | use_dual
    return PolicyLoss(loss, was_clipped)


def update_is_on_policy(cfg: GRPOConfig) -> bool:
    """True when each rollout batch is exactly one optimizer step (so every micro-batch of the update runs on the
    weights that sampled it) and `grpo.skip_old_logprob_pass` lets untemplated rows use the update's log-probs."""
    return cfg.skip_old_logprob_pass and cfg.ppo_epochs == 1 and cfg.ppo_minibatches == 1


def old_logprobs(logprobs: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The old log-probs [T] of the loss: ``inputs["old_logprobs"]``, except tokens flagged in the optional bool
    ``inputs["on_policy"]``, whose old log-prob is the current one detached (no separate pass; ratio 1)."""
    old = inputs["old_logprobs"]
    on_policy = inputs.get("on_policy")
    if on_policy is None:
        return old
    return torch.where(on_policy, logprobs.detach(), old)


@dataclass(frozen=True)
class GRPOLoss:
    """The loop's `p2o.policy_api.LossFn`: the clipped (dual-clip) surrogate plus an optional KL penalty.

    token inputs, each [T]: ``old_logprobs``, ``advantages``, ``weights`` (the aggregation weight with the step's
    global normaliser, the context-ratio mask and the row scale already folded in; see `token_weights`),
    ``ref_logprobs`` when ``kl_coef`` != 0, and optionally ``on_policy`` (bool; see `old_logprobs`). loss = sum_t w_t (l_t + kl_coef KL_t).

    Its fields are the loss's parameters (names and ranges as `GRPOConfig`'s). It is a
    `p2o.policy_api.HiddenStateLoss`: `loss_from_hidden` computes the same loss, gradients and metrics by
    `kernels.fused_linear_grpo_loss` from hidden states and the LM head (both paths report through `report`).
    """

    clip_low: float
    clip_high: float
    dual_clip: float = 0.0
    kl_coef: float = 0.0
    kl_type: str = "k3"

    def __post_init__(self) -> None:
        for name in ("clip_low", "clip_high", "dual_clip", "kl_coef"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"grpo.{name}: got {value!r}; expected a finite number >= 0")
        if self.clip_low >= 1:
            raise ValueError(f"grpo.clip_low: got {self.clip_low!r}; expected a number in [0, 1)")
        if self.dual_clip and self.dual_clip <= 1:
            raise ValueError(f"grpo.dual_clip: got {self.dual_clip!r}; expected 0 (off) or a number > 1")
        if self.kl_type not in ("k1", "k3"):
            raise ValueError(f"grpo.kl_type: got {self.kl_type!r}; expected k1 or k3")

    @classmethod
    def from_config(cls, cfg: GRPOConfig) -> GRPOLoss:
        return cls(cfg.clip_low, cfg.clip_high, cfg.dual_clip, cfg.kl_coef, str(cfg.kl_type))

    def knobs(self) -> dict[str, float | str]:
        """The parameters as the kernels take them (keyword arguments of `kernels.fused_linear_grpo_loss`)."""
        return dict(clip_low=self.clip_low, clip_high=self.clip_high, dual_clip=self.dual_clip, kl_coef=self.kl_coef,
                    kl_type=self.kl_type)

    def __call__(self, logprobs: torch.Tensor, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        old = old_logprobs(logprobs, inputs)
        pl = clipped_policy_loss(logprobs, old, inputs["advantages"], self.clip_low, self.clip_high, self.dual_clip)
        w = inputs["weights"]
        pg_loss = (pl.loss * w).sum()
        loss, kl = pg_loss, None
        if self.kl_coef:
            kl = kl_penalty(logprobs, inputs["ref_logprobs"], self.kl_type)
            loss = loss + self.kl_coef * (kl * w).sum()
        return loss, self.report(float(pg_loss.detach()), pl.clipped, kl, logprobs, old, inputs)

    def loss_from_hidden(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         inputs: dict[str, torch.Tensor], *, temperature: float = 1.0, tp_group=None,
                         vocab_start: int = 0, backend: str = "auto") -> tuple[torch.Tensor, dict[str, float]]:
        """`self(logprobs, inputs)` for logprobs = log_softmax(hidden @ weight.T / temperature)[targets], by the fused
        kernel (one autograd node from hidden [T, H] and LM-head rows weight [V_local, H], TP-split over tp_group)."""
        from kernels import fused_linear_grpo_loss

        w = inputs["weights"]
        out = fused_linear_grpo_loss(hidden, weight, targets, inputs["old_logprobs"], inputs["advantages"], w,
                                     **self.knobs(), ref_logprobs=inputs.get("ref_logprobs"), temperature=temperature,
                                     tp_group=tp_group, vocab_start=vocab_start, backend=backend,
                                     on_policy=inputs.get("on_policy"))
        pg_loss = out.per_token_loss.sum()
        if out.kl is not None:
            pg_loss = pg_loss - self.kl_coef * (out.kl * w).sum()
        return out.loss, self.report(float(pg_loss), out.clipped, out.kl, out.logprobs,
                                     old_logprobs(out.logprobs, inputs), inputs)

    def report(self, pg_loss: float, clipped: torch.Tensor, kl: torch.Tensor | None, logprobs: torch.Tensor,
               old: torch.Tensor, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics of one micro-batch: pg_loss (sum_t w_t l_t without KL), clip_frac_sum, active_tokens (w > 0),
        approx_kl_sum (sum of old - new over active tokens) and kl_sum (with a KL term); clipped [T] bool,
        old [T] the old log-probs the loss used (see `old_logprobs`)."""
        active = inputs["weights"] > 0
        metrics = {
            "pg_loss": pg_loss,
            "clip_frac_sum": float((clipped & active).sum()),
            "active_tokens": float(active.sum()),
            "approx_kl_sum": float(((old - logprobs.detach()) * active).sum()),
        }
        if kl is not None:
            metrics["kl_sum"] = float((kl.detach() * active).sum())
        return metrics


def make_loss_fn(cfg: GRPOConfig) -> GRPOLoss:
    """The `GRPOLoss` for ``cfg`` (a `p2o.policy_api.LossFn`)."""
    return GRPOLoss.from_config(cfg)
