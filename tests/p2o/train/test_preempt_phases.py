"""Pre-emption between the phases of a step (p2o.train.loop): a SIGUSR1 that arrives while a step generates
checkpoints the loop as it was before the step (nothing of the step kept: no mining, no update, no metrics) and
the resumed run redoes it; one that arrives during the update ends the step after the minibatch in progress, which
is then checkpointed as done.

The Trainer runs over `TorchPolicy` (a real transformers backend), the real verifier and the one-process control
plane; its rollout service and metrics sink are the parts of `p2o.train.rollout_service.RolloutService` and
`p2o.train.metrics_sink.MetricsSink` the step calls, with a generation phase that returns fixed rollouts and
receives the signal while it runs (the real runtime and Slurm are exercised by tests/slurm/test_p2o_job.py).
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch_policy import TorchPolicy  # noqa: E402  (tests/p2o/train is on sys.path)
from transformers import AutoTokenizer

from p2o import prompts
from p2o.config import load_config
from p2o.data.problem import Problem
from p2o.reward import Verifier
from p2o.telemetry.progress import make_bar
from p2o.train import checkpoint as ckpt
from p2o.train.distributed_control import ProcessGroupControl
from p2o.train.loop import Preempted, Trainer
from p2o.train.rows import TrainRow
from p2o.train.runtime import Runtime

PROBLEMS = [Problem("p0", "What is 2 + 2?", "4"), Problem("p1", "What is 3 + 5?", "8")]


class SavingPolicy(TorchPolicy):
    def save(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), Path(path) / "model.pt")


@pytest.fixture(scope="module")
def verifier():
    with Verifier(load_config().reward) as v:
        yield v


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _rows(tok) -> list[TrainRow]:
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    out = []
    for g, (p, texts) in enumerate(zip(PROBLEMS, (["\\boxed{4}", "\\boxed{5}"], ["\\boxed{8}", "\\boxed{9}"]),
                                       strict=True)):
        x = prompts.encode(tok, prompts.messages(p.question))
        out += [TrainRow(p.id, g, x, x, ids(t), t, "stop", "", 0) for t in texts]
    return out


def _trainer(tiny_model_dir, verifier, run_dir: Path, signal_in: str) -> tuple[Trainer, SimpleNamespace]:
    cfg = load_config(None, ["model.path=tiny-qwen3", "rollout.n=2", "rollout.prompts_per_step=2",
                             "grpo.ppo_minibatches=2", "optim.lr=1e-3", "p2o.tau=1",
                             "train.skip_zero_advantage_rows=false", f"logging.run_dir={run_dir}"])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = SavingPolicy(tiny_model_dir)
    seen = SimpleNamespace(logged=[], saved_rollouts=[], synced=[])

    def rollouts(problems, assignment, step):
        if signal_in == "generation":
            os.kill(os.getpid(), signal.SIGUSR1)  # arrives while the generation phase runs
        return _rows(tok)

    if signal_in == "update":
        plain_step = policy.train_step

        def train_step(batch, token_inputs, loss_fn):
            if not policy.calls:  # during the first PPO minibatch
                os.kill(os.getpid(), signal.SIGUSR1)
            return plain_step(batch, token_inputs, loss_fn)

        policy.train_step = train_step
    rollout = SimpleNamespace(verify=verifier.score_many, rollouts=rollouts,
                              sync_weights=lambda version: seen.synced.append(version))
    metrics = SimpleNamespace(
        progress=lambda desc, total: make_bar(desc, total, enabled=False),
        save_rollouts=lambda rows, step: seen.saved_rollouts.append(step),
        log=lambda metrics, step, kind="step": seen.logged.append((kind, step, dict(metrics))),
        gpu=lambda: {}, size_bytes=lambda: 0)
    trainer = Trainer(cfg, Runtime(run_dir=run_dir, control=ProcessGroupControl.single(), policy=policy,
                                   rollout=rollout, metrics=metrics, train_problems=PROBLEMS))
    trainer.install_signal_handlers()
    return trainer, seen


def _state(run_dir: Path, step: int) -> dict:
    path = ckpt.checkpoint_root(run_dir) / f"step_{step:06d}"
    assert (path / ckpt.COMPLETE).is_file() and (path / "policy" / "model.pt").is_file()
    return json.loads((path / "state.json").read_text())


def test_signal_during_generation_checkpoints_the_state_before_the_step(tiny_model_dir, verifier, tmp_path,
                                                                        restore_handlers):
    trainer, seen = _trainer(tiny_model_dir, verifier, tmp_path, "generation")
    weights = {k: v.clone() for k, v in trainer.policy.model.state_dict().items()}
    with pytest.raises(Preempted):
        trainer.train_step(PROBLEMS)
    state = _state(tmp_path, 0)
    assert state["global_step"] == 0 and state["step_in_epoch"] == 0 and state["policy_version"] == 0
    assert state["hard_store"] == {}  # the step's rollouts were not mined
    assert trainer.policy.calls == [] and seen.logged == [] and seen.saved_rollouts == [] and seen.synced == []
    assert all(torch.equal(v, weights[k]) for k, v in trainer.policy.model.state_dict().items())


def test_signal_during_the_update_ends_the_step_after_the_minibatch(tiny_model_dir, verifier, tmp_path,
                                                                    restore_handlers):
    trainer, seen = _trainer(tiny_model_dir, verifier, tmp_path, "update")
    metrics = trainer.train_step(PROBLEMS)
    assert len(trainer.policy.calls) == 1  # of grpo.ppo_minibatches = 2
    assert metrics["optimizer_steps"] == 1 and metrics["preempted_update"] == 1
    assert [k for k, *_ in seen.logged] == ["step"] and seen.synced == [1]
    with pytest.raises(Preempted):
        trainer._after_step()
    state = _state(tmp_path, 1)
    assert state["global_step"] == 1 and state["policy_version"] == 1 and set(state["hard_store"]) == set()


def test_no_signal_runs_every_minibatch(tiny_model_dir, verifier, tmp_path, restore_handlers):
    trainer, _ = _trainer(tiny_model_dir, verifier, tmp_path, "none")
    metrics = trainer.train_step(PROBLEMS)
    trainer._after_step()  # no checkpoint requested (save_every_steps) beyond the configured ones
    assert len(trainer.policy.calls) == 2 and "preempted_update" not in metrics
