"""The P2O epoch loop (plain GRPO when `p2o.enabled=false`: the same loop, so the two compare like for like).

One step (`Trainer.train_step`):
  1. prompts -> requests: hard samples of the last epoch with an assignment get their K templates (x+z_k)
  2. generation phase: the scheduler serves the training rollouts together with queued GEPA requests
  3. verifier rewards -> hard-sample mining (tau of K correct) -> GRPO advantages per group
  4. context distillation: every row is trained on x; templated rows get old log-probs on x and x+z
     (dual-context) and the context ratio mask (or `replace_prompts` / `fix_importance_ratio`; `none`: templated
     rows are trained on x+z like plain rows); with a KL term, the frozen reference scores every trained row
  5. PPO minibatches (clip, dual clip, global normaliser) -> optimizer steps
  6. bucketed weight export into the engine, policy version + 1
All log-probs are taken at `rollout.temperature` by the backend.
At epoch end (`Trainer.end_epoch`), if at least `p2o.min_hard` hard samples were mined, they go to the GEPA
service; `sync` waits for the assignment, `async` trains on and attaches it when it arrives (never one
computed for a policy more than `p2o.max_staleness` versions old).

Distributed layout: every rank of the Megatron job runs this loop; rank 0 owns the rollout side (engine,
scheduler, gateway, verifier, GEPA client) and broadcasts the step's rows over the control group, every rank takes
part in the backend's collective calls and in the generation phases (with vLLM every rank's engine generates a
share). The trainer's parts (control, policy, rollout, gepa, metrics) come from
`p2o.train.runtime.build_runtime`.
"""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from p2o.algo.distill import distill_old_logprobs
from p2o.algo.dynamic_batch import verl_update_plan
from p2o.algo.grpo import group_advantages, make_loss_fn, token_weights, update_is_on_policy, zero_variance_groups
from p2o.algo.hard_samples import HardStore, is_hard
from p2o.data.loaders import epoch_order
from p2o.gepa.service.client import RoundOutcome, SubmittedJob
from p2o.train import checkpoint as ckpt
from p2o.train.distributed_control import DistributedControl
from p2o.train.gepa_round import GEPARound
from p2o.train.metrics_sink import MetricsSink
from p2o.train.policy import PolicyBackend, SequenceBatch
from p2o.train.rollout_service import RolloutService
from p2o.train.rows import TrainRow

if TYPE_CHECKING:
    from p2o.train.runtime import Runtime

log = logging.getLogger(__name__)

REQUEUE_EXIT_CODE = 75  # "checkpointed on a signal; requeue me" (EX_TEMPFAIL)


class Preempted(Exception):
    """Raised after a checkpoint taken because of SIGUSR1/SIGTERM."""


@dataclass
class StepTokens:
    """What the update needs besides the rows: per-token tensors packed over the step's rows [T], per-row [N]."""

    old: torch.Tensor
    """[T] old log-probs (unused where `on_policy`)."""
    on_policy: torch.Tensor
    """[T] bool: the old log-prob is the update's own, detached (see `p2o.algo.grpo.old_logprobs`)."""
    mask: torch.Tensor
    """[T] context-ratio mask: multiplies a token's loss; masked tokens stay in the normaliser."""
    keep: torch.Tensor
    """[N] bool: the row's response mask; False (`p2o.drop_failed_template_rollouts`) takes the row out of the loss
    and the normaliser, as the released code zeroes its response mask."""
    ref: torch.Tensor | None = None
    """[T] reference-policy log-probs on the training context (`grpo.kl_coef > 0`)."""


class Trainer:
    """Owns the loop state and the run's parts (`p2o.train.runtime.Runtime`, each a typed field)."""

    control: DistributedControl
    """Rank identity, barriers and broadcasts (the gloo control group)."""
    policy: PolicyBackend
    reference: Any
    """The frozen initial policy (`grpo.kl_coef > 0`, else None): `logprobs(batch)` gives the KL term's reference
    log-probs."""
    rollout: RolloutService
    gepa: GEPARound | None
    """The GEPA service's jobs (rank 0 with P2O on)."""
    metrics: MetricsSink

    def __init__(self, cfg, parts: Runtime):
        self.cfg = cfg
        self.run_dir = parts.run_dir
        self.control, self.policy, self.reference = parts.control, parts.policy, parts.reference
        self.rollout, self.gepa, self.metrics = parts.rollout, parts.gepa, parts.metrics
        self.state = ckpt.LoopState()
        self.hard = HardStore()
        self.loss_fn = make_loss_fn(cfg.grpo)
        if cfg.grpo.kl_coef and self.reference is None:
            raise ValueError(f"grpo.kl_coef = {cfg.grpo.kl_coef} needs a reference policy; the runtime has none "
                             "(build_runtime creates it when grpo.kl_coef > 0)")
        self._signal: int | None = None
        self.problems = parts.train_problems
        self.steps_per_epoch = max(1, len(self.problems) // cfg.rollout.prompts_per_step)
        if cfg.train.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.steps_per_epoch)

    # ------------------------------------------------------------------ lifecycle
    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            log.warning("received signal %d: will checkpoint at the next phase boundary", signum)
            self._signal = signum

        for s in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(s, handler)
        log.info("pre-emption: on SIGUSR1/SIGTERM the run checkpoints at the next phase boundary and exits %d",
                 REQUEUE_EXIT_CODE)

    def resume(self) -> bool:
        """Restore the newest usable checkpoint (checkpoint.resume = auto | none | path); True if resumed.

        With auto, a damaged latest checkpoint (manifest, state.json or policy load fails) is skipped with a
        warning for the previous complete one; an explicit path is used or fails. metrics.jsonl is cut back
        to the checkpoint (to nothing on a fresh start), so redone steps are not logged twice."""
        mode = self.cfg.checkpoint.resume
        candidates, explicit = ckpt.resume_candidates(mode, self.run_dir)
        if self.control.is_rank0:
            ckpt.clean_staging(self.run_dir)
        failures: list[str] = []
        for path in candidates:
            try:
                state = ckpt.load_state(path)
                error = None
            except ckpt.CheckpointError as e:
                error = e
            if error is None:
                try:
                    self.policy.load(str(path) + "/policy")
                except Exception as e:  # noqa: BLE001 - reported below, with the checkpoint's path
                    error = ckpt.CheckpointError(f"{path / 'policy'}: could not be loaded ({type(e).__name__}: {e})")
            if self.control.any_rank(error is not None):
                reason = str(error) if error is not None else f"{path}: another rank could not load it"
                if explicit:
                    raise error or ckpt.CheckpointError(reason)
                log.warning("checkpoint %s is unusable (%s); trying the previous complete checkpoint", path, reason)
                failures.append(reason)
                continue
            self.state = state
            self.hard.load_dict(self.state.hard_store)
            self.state.restore_rng()
            self.rollout.sync_weights(self.state.policy_version)
            self.metrics.truncate(self.state.global_step, self.state.metrics_bytes)
            log.info("resumed from %s (epoch %d, step %d, version %d)%s", path, self.state.epoch,
                     self.state.step_in_epoch, self.state.policy_version,
                     f" after skipping {len(failures)} damaged checkpoint(s)" if failures else "")
            return True
        if failures:
            raise ckpt.CheckpointError("no usable checkpoint in " + str(ckpt.checkpoint_root(self.run_dir))
                                       + ": " + "; ".join(failures) + " (checkpoint.resume=none starts over)")
        self.metrics.truncate(0, 0)  # records of an attempt killed before its first checkpoint are redone
        return False

    def save(self) -> None:
        self.state.hard_store = self.hard.to_dict()
        self.state.capture_rng()
        if self.control.is_rank0:
            self.state.metrics_bytes = self.metrics.size_bytes()
        with ckpt.saving(self.run_dir, self.state.global_step, self.control.is_rank0) as tmp:
            if self.control.is_rank0:
                tmp.mkdir(parents=True, exist_ok=True)
            self.control.barrier()
            self.policy.save(str(tmp / "policy"))
            self.control.barrier()
            if self.control.is_rank0:
                ckpt.commit(self.run_dir, self.state.global_step, self.state, self.cfg.checkpoint.keep_last)
            self.control.barrier()

    def fit(self) -> dict:
        """Run to the configured number of epochs; returns the run summary."""
        t0 = time.time()
        while self.state.epoch < self.cfg.train.epochs:
            if not self.state.epoch_done:
                order = epoch_order(len(self.problems), self.cfg.data.shuffle_seed, self.state.epoch)
                while self.state.step_in_epoch < self.steps_per_epoch:
                    k = self.state.step_in_epoch * self.cfg.rollout.prompts_per_step
                    batch = [self.problems[i] for i in order[k: k + self.cfg.rollout.prompts_per_step]]
                    self.train_step(batch)
                    self._after_step()
                self.state.epoch_done = True
            self.end_epoch()
        summary = {"status": "ok", "epochs": self.cfg.train.epochs, "steps": self.state.global_step,
                   "policy_version": self.state.policy_version, "wall_s": round(time.time() - t0, 2)}
        return summary

    def _preempt_pending(self) -> bool:
        """Collective (every rank calls it at the same points): True once any rank got SIGUSR1/SIGTERM."""
        return self.control.any_rank(self._signal is not None)

    def _check_preempt(self) -> None:
        """At a boundary where nothing of the current step has been kept (after its generation phase): on a
        pending signal, checkpoint the loop as it was before the step and raise Preempted; the resumed run
        redoes the step (same prompts, same sampling seeds)."""
        if self._preempt_pending():
            log.warning("pre-empted during step %d: its rollouts are dropped and the step is redone on resume",
                        self.state.global_step + 1)
            self.save()
            raise Preempted()

    def _after_step(self) -> None:
        every = self.cfg.checkpoint.save_every_steps
        signalled = self._preempt_pending()
        if signalled or (every and self.state.global_step % every == 0):
            self.save()
        if signalled:
            raise Preempted()

    # ------------------------------------------------------------------ one step
    def train_step(self, problems) -> dict[str, float]:
        step = self.state.global_step + 1
        times: dict[str, float] = {}
        self._collect_gepa(block=False)  # async GEPA: templates as soon as the round has ended

        t = time.time()
        rows = self.rollout.rollouts(problems, self._active_assignment(), step)  # a generation phase: every rank calls it
        times["time_generate_s"] = time.time() - t
        self._check_preempt()
        t = time.time()
        metrics = self._score_and_mine(rows, problems) if self.control.is_rank0 else None
        times["time_verify_s"] = time.time() - t
        rows, metrics = self.control.broadcast((rows, metrics))
        self.metrics.save_rollouts(rows, step)

        t = time.time()
        tokens = self._old_logprobs(rows, metrics)
        times["time_old_logprob_s"] = time.time() - t

        t = time.time()
        update = self._update(rows, tokens)
        times["time_update_s"] = time.time() - t

        t = time.time()
        self.state.policy_version += 1
        self.rollout.sync_weights(self.state.policy_version)
        times["time_weight_sync_s"] = time.time() - t

        self.state.global_step = step
        self.state.step_in_epoch += 1
        gen_tokens = sum(len(r.response_ids) for r in rows)
        metrics.update(update)
        metrics.update(times)
        metrics.update({
            "epoch": self.state.epoch, "policy_version": self.state.policy_version,
            "time_step_s": sum(times.values()), "gen_tokens": gen_tokens,
            "gen_tokens_per_s": gen_tokens / max(times["time_generate_s"], 1e-9),
            "train_tokens_per_s": update.get("train_tokens", 0) / max(times["time_update_s"], 1e-9),
            **self.metrics.gpu(),
        })
        self.metrics.log(metrics, step)
        return metrics

    def _active_assignment(self) -> dict[str, list[str]]:
        """Templates for last epoch's hard samples; empty when P2O is off or the assignment is too stale."""
        st = self.state
        if not self.cfg.p2o.enabled or not st.assignment:
            return {}
        if self.cfg.p2o.gepa_mode == "async" and st.policy_version - st.assignment_version > self.cfg.p2o.max_staleness:
            return {}
        prev = set(st.prev_hard)
        return {pid: z for pid, z in st.assignment.items() if pid in prev}

    def _score_and_mine(self, rows: list[TrainRow], problems) -> dict[str, float]:
        """Rewards, hard-sample mining and advantages (rank 0; rows are updated in place)."""
        cfg = self.cfg
        by_id = {p.id: p for p in problems}
        verdicts = self.rollout.verify([(r.text, by_id[r.problem_id].answer) for r in rows])
        for r, v in zip(rows, verdicts, strict=True):
            r.reward, r.verdict_reason = (1.0 if v.correct else 0.0), v.reason
        rewards = torch.tensor([r.reward for r in rows])
        groups = torch.tensor([r.group for r in rows])
        adv = group_advantages(rewards, groups, cfg.grpo.adv_norm, cfg.grpo.adv_eps)
        for r, a in zip(rows, adv.tolist(), strict=True):
            r.advantage = a
        n_hard = 0
        for g in sorted(set(groups.tolist())):
            members = [r for r in rows if r.group == g]
            problem = by_id[members[0].problem_id]
            if is_hard([m.reward for m in members], [m.templated for m in members], cfg.rollout.n,
                       cfg.p2o.tau, cfg.p2o.hard_on):
                self.hard.add(problem, self.state.epoch, [m.reward for m in members], [m.text for m in members])
                n_hard += 1
            else:
                self.hard.discard(problem.id)
        templated = [r for r in rows if r.templated]
        hard_prev = set(self._active_assignment())
        plain_on_hard = [r for r in rows if not r.templated and r.problem_id in hard_prev]
        zero = zero_variance_groups(rewards, groups)
        return {
            "reward_mean": float(rewards.mean()),
            "pass_rate": float(sum(any(r.reward > 0 for r in rows if r.group == g) for g in set(groups.tolist()))
                               / len(problems)),
            "hard_in_batch": n_hard, "hard_count": len(self.hard), "hard_frac": n_hard / len(problems),
            "zero_adv_frac": float(zero.float().mean()),
            "templated_share": len(templated) / len(rows),
            "templated_success": (sum(r.reward for r in templated) / len(templated)) if templated else None,
            "untemplated_success": (sum(r.reward for r in plain_on_hard) / len(plain_on_hard)) if plain_on_hard else None,
            "response_len_mean": sum(len(r.response_ids) for r in rows) / len(rows),
            "truncated_frac": sum(r.finish_reason == "length" for r in rows) / len(rows),
        }

    def _old_logprobs(self, rows: list[TrainRow], metrics: dict) -> StepTokens:
        """Old log-probs on each row's training context, the on-policy flags, the context-ratio mask, the rows kept
        in the loss and, with a KL term, the reference's log-probs (see `StepTokens`).

        Only rows that can carry a gradient are scored (see `_row_can_learn`); the others keep zeros, which the
        update never reads. Rows trained on the context they were sampled from are flagged on-policy instead of
        scored when `grpo.skip_old_logprob_pass` applies (`p2o.algo.grpo.update_is_on_policy`); distilled rows
        (templated, trained on x) get the dual-context pass and `p2o.distill`'s old log-probs and mask."""
        cfg, policy = self.cfg, self.policy
        offsets = [0]
        for r in rows:
            offsets.append(offsets[-1] + len(r.response_ids))
        out = StepTokens(old=torch.zeros(offsets[-1]), on_policy=torch.zeros(offsets[-1], dtype=torch.bool),
                         mask=torch.ones(offsets[-1]), keep=torch.ones(len(rows), dtype=torch.bool))
        if cfg.p2o.drop_failed_template_rollouts:
            out.keep = torch.tensor([not (r.templated and r.reward <= 0) for r in rows], dtype=torch.bool)
            metrics["dropped_rows"] = int((~out.keep).sum())
        live = [i for i, r in enumerate(rows) if self._row_can_learn(r, bool(out.keep[i]))]
        if not live:
            return out
        span = lambda ids: torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in ids])  # noqa: E731
        on_x = lambda ids: SequenceBatch([rows[i].train_prompt_ids for i in ids],  # noqa: E731
                                         [rows[i].response_ids for i in ids])
        plain = [i for i in live if not rows[i].distilled]
        distilled = [i for i in live if rows[i].distilled]
        if plain and update_is_on_policy(cfg.grpo):
            out.on_policy[span(plain)] = True
        elif plain:
            out.old[span(plain)] = policy.logprobs(on_x(plain))
        if distilled:  # the same responses under x and x+z: one dual-context pass
            idx = span(distilled)
            responses = [rows[i].response_ids for i in distilled]
            lp_x, lp_xz = policy.dual_logprobs(on_x(distilled),
                                               SequenceBatch([rows[i].gen_prompt_ids for i in distilled], responses))
            o, m = distill_old_logprobs(cfg.p2o.distill, lp_x, lp_xz, cfg.p2o.ratio_low, cfg.p2o.ratio_high)
            out.old[idx], out.mask[idx] = o, m
            metrics["mask_rate"] = float(1 - m.mean())
            metrics["context_log_ratio_mean"] = float((lp_x - lp_xz).mean())
        if self.reference is not None:  # KL reference on the context the row is trained on
            out.ref = torch.zeros(offsets[-1])
            out.ref[span(live)] = self.reference.logprobs(on_x(live))
        return out

    def _row_can_learn(self, row: TrainRow, has_weight: bool = True) -> bool:
        """False when the row's loss is exactly zero whatever the policy: all its token weights are 0 (a dropped
        row, or every token masked), or a zero advantage without a KL term. Such rows are skipped when
        train.skip_zero_advantage_rows is on; zero-advantage rows still count in the normaliser, so the gradient
        is unchanged. With a KL term a zero-advantage row still learns (towards the reference)."""
        if not self.cfg.train.skip_zero_advantage_rows:
            return True
        if not has_weight:
            return False
        return bool(self.cfg.grpo.kl_coef) or row.advantage != 0

    def _update(self, rows: list[TrainRow], tokens: StepTokens) -> dict[str, float]:
        """PPO minibatches over the step's rows; each minibatch is one optimizer step with fixed per-token weights."""
        cfg, policy = self.cfg, self.policy
        offsets = [0]
        for r in rows:
            offsets.append(offsets[-1] + len(r.response_ids))
        adv_tok = torch.cat([torch.full((len(r.response_ids),), r.advantage) for r in rows])
        minibatches = self._minibatches(rows, tokens.keep)
        out: dict[str, float] = {"grad_norm": 0.0, "loss": 0.0, "train_tokens": 0, "clip_frac": 0.0,
                                 "optimizer_steps": 0, "skipped_rows": 0}
        clip_sum = active_sum = 0.0
        bar = self.metrics.progress(f"step {self.state.global_step + 1} update", cfg.grpo.ppo_epochs * len(minibatches))
        for _ in range(cfg.grpo.ppo_epochs):
            for idx, agg in minibatches:
                bar.update(1)
                lens = [len(rows[i].response_ids) for i in idx]
                tok = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in idx])
                w = agg * tokens.mask[tok]
                inputs = {"old_logprobs": tokens.old[tok], "advantages": adv_tok[tok], "weights": w}
                if tokens.on_policy[tok].any():
                    inputs["on_policy"] = tokens.on_policy[tok]
                if tokens.ref is not None:
                    inputs["ref_logprobs"] = tokens.ref[tok]
                keep = self._rows_with_gradient(rows, idx, inputs, lens)
                out["skipped_rows"] += len(idx) - len(keep)
                if not keep:
                    continue
                sel = torch.cat([torch.arange(sum(lens[:j]), sum(lens[:j + 1])) for j in keep])
                batch = SequenceBatch([rows[idx[j]].train_prompt_ids for j in keep],
                                      [rows[idx[j]].response_ids for j in keep])
                step = policy.train_step(batch, {k: v[sel] for k, v in inputs.items()}, self.loss_fn)
                out["grad_norm"] = step.grad_norm
                out["loss"] += step.loss
                out["lr"] = step.lr
                out["train_tokens"] += step.num_tokens
                out["optimizer_steps"] += 1
                clip_sum += step.extra.get("clip_frac_sum", 0.0)
                active_sum += step.extra.get("active_tokens", 0.0)
                if "kl_sum" in step.extra:
                    out["kl_sum"] = out.get("kl_sum", 0.0) + step.extra["kl_sum"]
                if self._preempt_pending():  # end the step here; _after_step checkpoints it as done
                    out["preempted_update"] = 1
                    break
            if out.get("preempted_update"):
                break
        bar.close()
        out["clip_frac"] = clip_sum / active_sum if active_sum else 0.0
        if "kl_sum" in out:
            out["kl_mean"] = out.pop("kl_sum") / active_sum if active_sum else 0.0
        return out

    def _minibatches(self, rows: list[TrainRow], keep: torch.Tensor) -> list[tuple[list[int], torch.Tensor]]:
        """(row indices, aggregation weights [T_mb] before the context-ratio mask) of each optimizer step.

        Default: `grpo.ppo_minibatches` strided minibatches, `grpo.loss_agg` over each. `grpo.verl_dynamic_bsz`:
        verl's mini-batches and per-micro-batch token-means (`p2o.algo.dynamic_batch.verl_update_plan`)."""
        g = self.cfg.grpo
        lens = [len(r.response_ids) for r in rows]
        if not g.verl_dynamic_bsz:
            n_mb = min(g.ppo_minibatches, len(rows))
            return [(idx, self._token_weights(idx, [lens[i] for i in idx], keep))
                    for idx in (list(range(mb, len(rows), n_mb)) for mb in range(n_mb))]
        plan = verl_update_plan([len(r.gen_prompt_ids) + n for r, n in zip(rows, lens, strict=True)],
                                [len(r.train_prompt_ids) + n for r, n in zip(rows, lens, strict=True)],
                                [n * int(k) for n, k in zip(lens, keep.tolist(), strict=True)],
                                g.verl_world_size, g.ppo_minibatches, g.verl_max_token_len_per_gpu,
                                g.verl_balance_batch)
        return [(st.rows, torch.repeat_interleave(torch.tensor(st.coef) * keep[st.rows].float(),
                                                  torch.tensor([lens[i] for i in st.rows])).float())
                for st in plan]

    def _token_weights(self, idx: list[int], lens: list[int], keep: torch.Tensor) -> torch.Tensor:
        """Aggregation weights [T_mb] of one optimizer step's rows `idx` (response lengths `lens`): `grpo.loss_agg`
        over the rows kept in the loss (a dropped row has weight 0 and is not in the normaliser)."""
        kept = keep[idx].tolist()
        kept_lens = [n for n, k in zip(lens, kept, strict=True) if k]
        w = token_weights(lens, self.cfg.grpo.loss_agg, len(kept_lens), sum(kept_lens), self.cfg.rollout.max_new_tokens)
        return w * torch.repeat_interleave(keep[idx].float(), torch.tensor(lens))

    def _rows_with_gradient(self, rows, idx, inputs, lens) -> list[int]:
        """Positions (in idx) of rows that go through the forward/backward pass (see `_row_can_learn`)."""
        keep, start = [], 0
        for j, n in enumerate(lens):
            has_weight = bool((inputs["weights"][start:start + n] > 0).any())
            if self._row_can_learn(rows[idx[j]], has_weight):
                keep.append(j)
            start += n
        return keep

    # ------------------------------------------------------------------ epoch end
    def end_epoch(self) -> None:
        """Held-out evaluation, the GEPA round for this epoch's hard samples, then a checkpoint."""
        cfg, st = self.cfg, self.state
        epoch_metrics: dict[str, Any] = {"epoch": st.epoch, "hard_count": len(self.hard)}
        # generation phases: every rank calls them (rank 0 returns the metrics); the templated hard samples of this
        # epoch are evaluated again with the plain prompt x
        epoch_metrics.update(self.rollout.evaluate_heldout(st.epoch))
        epoch_metrics.update(self.rollout.evaluate_plain(self._templated_this_epoch(), "hard_plain", st.epoch))
        last_epoch = st.epoch + 1 >= cfg.train.epochs  # templates found now could never be used
        if cfg.p2o.enabled and st.gepa_job is None and not last_epoch:
            epoch_metrics["gepa_submitted"] = int(self._submit_gepa())
        if st.gepa_job and cfg.p2o.gepa_mode == "sync":  # the next epoch starts with this round's templates
            self._collect_gepa(block=True)
        self.metrics.log(epoch_metrics, st.global_step, kind="epoch")
        self.hard.clear()
        st.epoch += 1
        st.step_in_epoch = 0
        st.epoch_done = False
        self.save()

    def _templated_this_epoch(self) -> list:
        """This epoch's problems rolled out with templates: last epoch's hard samples assigned at least one
        non-empty template (set cover may assign only the empty one) that came up in this epoch's steps (sync
        GEPA; in async mode, those with such an assignment at the epoch end)."""
        assigned = {pid for pid, z in self._active_assignment().items() if any(t.strip() for t in z)}
        if not assigned:
            return []
        order = epoch_order(len(self.problems), self.cfg.data.shuffle_seed, self.state.epoch)
        seen = order[: self.steps_per_epoch * self.cfg.rollout.prompts_per_step]
        return [self.problems[i] for i in seen if self.problems[i].id in assigned]

    # ------------------------------------------------------------------ the GEPA round
    def _submit_gepa(self) -> bool:
        """Epoch end: this epoch's hard samples go to the GEPA service (rank 0 submits when there are at least
        `p2o.min_hard`, every rank keeps the job record). False when no round was started: then the next epoch
        runs without templates."""
        st = self.state
        job: SubmittedJob | None = None
        if self.control.is_rank0 and len(self.hard) >= self.cfg.p2o.min_hard:
            assert self.gepa is not None, "rank 0 of a P2O run holds a GEPA round"
            job = self.gepa.submit(self.hard, st.epoch, st.policy_version)
        elif self.control.is_rank0:
            log.info("epoch %d: %d hard samples < p2o.min_hard = %d: no GEPA round, no templates next epoch",
                     st.epoch, len(self.hard), self.cfg.p2o.min_hard)
        st.gepa_job = self.control.broadcast(job)
        if st.gepa_job is None:
            st.assignment, st.prev_hard = {}, []
        return st.gepa_job is not None

    def _collect_gepa(self, block: bool) -> None:
        """The submitted round's templates become the assignment of its hard samples once the job has ended.
        Blocking, every rank waits in a generation phase (the engines serve the service's candidate evaluations
        while rank 0 waits for the job); else rank 0 polls once. Every rank receives the outcome."""
        st = self.state
        if not st.gepa_job:
            return
        job = st.gepa_job
        outcome: RoundOutcome | None = None
        if block:
            outcome = self.rollout.serve_while(lambda: self.gepa.wait(job))
        elif self.control.is_rank0:
            outcome = self.gepa.poll(job)
        outcome = self.control.broadcast(outcome)
        if outcome is None:
            return
        st.gepa_job = None
        st.assignment = outcome.assignment
        st.assignment_version = job.policy_version
        st.prev_hard = list(job.hard_ids)
        self.metrics.log({**outcome.metrics, "epoch": job.epoch, "assigned": len(st.assignment)},
                         st.global_step, kind="gepa")
