"""The control plane (p2o.train.distributed_control) on two gloo ranks.

On GPU the default process group is NCCL: a CPU tensor on it fails ("No backend type associated with device type
cpu") and its watchdog aborts a collective that waits longer than the default timeout. Both are reproduced on CPU:
the default group is created as "cuda:gloo" (a backend for CUDA tensors only, so every CPU collective on it fails
with NCCL's error), or with a timeout of a few seconds, and the control messages must not notice.
"""
from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from p2o.train.distributed_control import DistributedControl, ProcessGroupControl

LONG = datetime.timedelta(minutes=10)
SHORT = datetime.timedelta(seconds=5)


def _init(rank: int, init_file: str, backend: str, timeout: datetime.timedelta) -> ProcessGroupControl:
    # both processes arrive before the default group is built, so its (short) timeout only bounds collectives
    Path(f"{init_file}.rank{rank}").touch()
    deadline = time.monotonic() + 300
    while not all(Path(f"{init_file}.rank{r}").exists() for r in range(2)):
        assert time.monotonic() < deadline, "the other rank did not start"
        time.sleep(0.05)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=timeout)
    return ProcessGroupControl.create(LONG)


def _cpu_less_default_group(rank: int, init_file: str) -> None:
    control = _init(rank, init_file, "cuda:gloo", LONG)
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        dist.barrier()  # the default group is as unusable for control traffic as NCCL is
    assert isinstance(control, DistributedControl) and control.rank == rank and control.world_size == 2
    control.barrier()
    assert control.broadcast({"job": "j1", "rank": rank}) == {"job": "j1", "rank": 0}
    assert control.broadcast(None) is None
    assert control.any_rank(rank == 1) and control.any_rank(rank == 0)
    assert not control.any_rank(False)
    control.barrier()  # neither rank tears its groups down while the other still uses them
    dist.destroy_process_group()


@pytest.mark.multiproc
def test_control_messages_never_use_the_default_group(tmp_path):
    mp.spawn(_cpu_less_default_group, args=(str(tmp_path / "pg"),), nprocs=2, join=True)


def _long_rank0_phase(rank: int, init_file: str) -> None:
    control = _init(rank, init_file, "gloo", SHORT)
    if rank == 0:
        time.sleep(2 * SHORT.total_seconds())  # a rank-0-only phase (a GEPA round, an evaluation)
        control.broadcast("phase done")
    else:  # waits on the control group past the default group's timeout
        assert control.broadcast(None) == "phase done"
    control.barrier()
    if rank == 1:  # the same wait on the default group is aborted by its timeout (rank 0 never joins it)
        with pytest.raises(RuntimeError):
            dist.barrier()
    control.barrier()


@pytest.mark.slow
@pytest.mark.multiproc
def test_other_ranks_wait_out_a_long_rank0_phase_on_the_control_group(tmp_path):
    mp.spawn(_long_rank0_phase, args=(str(tmp_path / "pg"),), nprocs=2, join=True)


def test_one_process_needs_no_group():
    control = ProcessGroupControl.single()
    control.barrier()
    assert control.is_rank0 and control.broadcast(3) == 3 and control.any_rank(True) and not control.any_rank(False)
    with pytest.raises(ValueError, match="control process group"):
        ProcessGroupControl(0, 2, None)


# ---------------------------------------------------------------------------- the trainer's control traffic
def _trainer_epoch(rank: int, init_file: str, model_dir: str, run_dir: str) -> None:
    """Two ranks run a step, the epoch end (a synchronous GEPA round: rank 0 waits for the job while rank 1 waits
    on the control group) and checkpoints, with a default group that fails any CPU collective."""
    from types import SimpleNamespace

    from torch_policy import TorchPolicy
    from transformers import AutoTokenizer

    from p2o import prompts
    from p2o.config import load_config
    from p2o.data.problem import Problem
    from p2o.gepa.service.client import RoundOutcome, SubmittedJob
    from p2o.reward import Verifier
    from p2o.telemetry.metrics import MetricsLogger, read_metrics
    from p2o.train import checkpoint as ckpt
    from p2o.train.loop import Trainer
    from p2o.train.metrics_sink import RunMetrics
    from p2o.train.rows import TrainRow
    from p2o.train.runtime import Runtime

    control = _init(rank, init_file, "cuda:gloo", LONG)
    problems = [Problem("p0", "What is 2 + 2?", "4"), Problem("p1", "What is 3 + 5?", "8")]
    cfg = load_config(None, ["model.path=tiny-qwen3", "rollout.n=2", "rollout.prompts_per_step=2", "train.epochs=2",
                             "train.steps_per_epoch=1", "p2o.tau=2", "p2o.min_hard=1", "p2o.gepa_mode=sync",
                             "train.skip_zero_advantage_rows=false", f"logging.run_dir={run_dir}"])
    tok = AutoTokenizer.from_pretrained(model_dir)

    class RankPolicy(TorchPolicy):
        def save(self, path: str) -> None:  # each rank its own shard, as Megatron's checkpoints are
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / f"rank{rank}").write_text("saved")

    def rollouts(batch, assignment, step):
        if rank != 0:
            return None
        ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        rows = []
        for g, p in enumerate(batch):
            x = prompts.encode(tok, prompts.messages(p.question))
            rows += [TrainRow(p.id, g, x, x, ids(t), t, "stop", "", 0) for t in (f"\\boxed{{{p.answer}}}", "no")]
        return rows

    waits = []

    def serve_while(wait):  # rank 0 waits for the job while its engine serves; the other ranks return at once
        if rank != 0:
            return None
        waits.append(1)
        return wait()

    job = SubmittedJob("j1", epoch=0, policy_version=1, hard_ids=["p0", "p1"], submitted_at=0.0)
    gepa = SimpleNamespace(submit=lambda hard, epoch, version: dataclasses.replace(job, hard_ids=sorted(hard.samples)),
                           poll=lambda j: None,
                           wait=lambda j: RoundOutcome({"p0": ["Count.", ""], "p1": ["", "Add."]}, {"pool_size": 3}))
    synced: list[int] = []
    with Verifier(cfg.reward) as verifier:
        rollout = SimpleNamespace(rollouts=rollouts, serve_while=serve_while, verify=verifier.score_many,
                                  sync_weights=synced.append, evaluate_heldout=lambda epoch: {},
                                  evaluate_plain=lambda problems, name, epoch: {})
        logger = MetricsLogger(run_dir) if rank == 0 else None
        trainer = Trainer(cfg, Runtime(run_dir=Path(run_dir), control=control, policy=RankPolicy(model_dir),
                                       rollout=rollout, metrics=RunMetrics(cfg, Path(run_dir), logger),
                                       train_problems=problems, gepa=gepa if rank == 0 else None))
        assert not trainer.resume()
        trainer.train_step(problems)
        trainer._after_step()
        trainer.state.epoch_done = True
        trainer.end_epoch()
    st = trainer.state
    assert waits == ([1] if rank == 0 else [])
    assert st.epoch == 1 and st.gepa_job is None and st.prev_hard == ["p0", "p1"] and st.assignment_version == 1
    assert st.assignment == {"p0": ["Count.", ""], "p1": ["", "Add."]}  # rank 0's outcome, on every rank
    assert synced == [1]
    control.barrier()
    trainer.metrics.close()
    if rank == 0:
        path = ckpt.checkpoint_root(Path(run_dir)) / "step_000001"
        assert (path / ckpt.COMPLETE).is_file()
        assert sorted(p.name for p in (path / "policy").iterdir()) == ["rank0", "rank1"]
        kinds = [r["kind"] for r in read_metrics(Path(run_dir))]
        assert kinds == ["step", "gepa", "epoch"], kinds


@pytest.mark.slow
@pytest.mark.multiproc
def test_the_trainer_step_and_gepa_round_keep_off_the_default_group(tmp_path, tiny_model_dir):
    """Step rows, pre-emption flags, the GEPA job and its outcome, checkpoint barriers: all on the control group."""
    mp.spawn(_trainer_epoch, args=(str(tmp_path / "pg"), str(tiny_model_dir), str(tmp_path / "run")), nprocs=2,
             join=True)
