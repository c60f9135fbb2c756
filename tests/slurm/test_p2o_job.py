"""The real slurm/p2o_qwen3.sh on the local cluster with the tiny CPU config (configs/slurm_test_cpu.yaml):
the heterogeneous job runs the trainer on one node and the GEPA service on the other, crosses an epoch
boundary with a GEPA round and exits 0; a SIGUSR1 mid-run checkpoints, requeues and ends with the same
final metrics and loop state as the uninterrupted run, also when it arrives in the middle of a generation
phase and Slurm's SIGTERM follows it before the trainer has stopped; a killed GEPA service or a bad config
ends the job non-zero, in bounded time, with a summary naming the component.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.slurm.conftest import Submitted, _locked, _tail, submit, wait_for_path

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group(name="slurm")]

needs_trainer = pytest.mark.skipif(importlib.util.find_spec("p2o.train.loop") is None,
                                   reason="p2o train not available")
JOB_TIMEOUT_S = 420  # includes waiting in the queue behind another test's job (one job fits at a time)
OVERRIDES = "rollout.max_new_tokens=512"
"""Generation phases of about 5 s on this machine (the random model never stops early): long enough for a test to
signal the trainer inside one."""


def job_env(run_dir: Path, **extra: str) -> dict[str, str]:
    return {"CONFIG": "configs/slurm_test_cpu.yaml", "RUN_DIR": str(run_dir), "PYTHON": sys.executable,
            "GPUS_PER_NODE": "0", "GEPA_CPUS": "1", "STOP_TIMEOUT_S": "30",
            "OVERRIDES": OVERRIDES, **extra}


def finished(job: Submitted, timeout_s: float = JOB_TIMEOUT_S) -> int:
    rc = job.wait(timeout_s)
    assert rc != 124, f"job {job.job_id} hit the test timeout:\n{_tail(job.output)}"
    return rc


def finished_after_requeue(cluster, job: Submitted, job_dir: Path, timeout_s: float = JOB_TIMEOUT_S) -> int:
    """Exit code of a requeued job's second attempt: once the job script has written that attempt's summary line
    and Slurm's record shows the job ended. `sbatch --wait`, and the record itself, can show the first attempt's
    exit code between that attempt's end and the requeue, so neither is read before the second line exists.
    Call after `release_after_requeue`: from then on, an ended job without a second summary line is a failure."""
    deadline = time.monotonic() + timeout_s
    summary_txt = job_dir / "summary.txt"
    ended_at = None
    while time.monotonic() < deadline:
        attempts = summary_txt.read_text().splitlines() if summary_txt.is_file() else []
        info = cluster.run("scontrol", "show", "job", job.job_id).stdout
        states = re.findall(r"JobState=(\w+)", info)  # one per hetjob component; none once Slurm forgot the job
        if not states and len(attempts) >= 2:  # ended and already forgotten (MinJobAge): the script's own record
            return json.loads((job_dir / "summary.json").read_text())["exit_code"]
        ended = bool(states) and all(s in TERMINAL_STATES for s in states)
        if ended and len(attempts) >= 2:
            code = re.search(r"ExitCode=(\d+):(\d+)", info)
            assert code, f"no ExitCode in the record of job {job.job_id}"
            return int(code.group(1))
        ended_at = (ended_at or time.monotonic()) if ended else None
        if ended_at is not None and time.monotonic() - ended_at > 10:
            raise AssertionError(f"job {job.job_id} ended ({states}) without a second attempt's summary:\n"
                                 f"{_tail(job.output)}\nslurmctld:\n{cluster.controller_log(job.job_id)}")
        time.sleep(0.5)
    raise AssertionError(f"job {job.job_id} did not end within {timeout_s} s:\n{_tail(job.output)}\n"
                         f"slurmctld:\n{cluster.controller_log(job.job_id)}")


def summary(run_dir: Path, job_id: str) -> dict:
    return json.loads((run_dir / "slurm" / job_id / "summary.json").read_text())


TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE"}
"""Slurm job states after which a job (or this attempt of it) runs no more."""


def release_after_requeue(cluster, job: Submitted, timeout_s: float = 150) -> None:
    """Wait until every component of the job has requeued itself (PENDING, restarted), then start it now instead of
    after Slurm's 121-s requeue delay. Two rules: release only once every component has finished requeueing (Slurm
    resets the begin time of a component that finishes later), and not within the second of the first attempt's
    credential revocation (slurmd refuses that launch, "Job credential revoked", and the job ends). A begin time a
    few seconds ahead instead is not picked up for minutes by the scheduler of this cluster."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = cluster.run("scontrol", "show", "job", job.job_id).stdout
        states, restarts = re.findall(r"JobState=(\w+)", info), re.findall(r"Restarts=(\d+)", info)
        if states and set(states) == {"PENDING"} and restarts and min(map(int, restarts)) >= 1:
            time.sleep(2)  # the revocation happened before the requeue finished: now is a later second
            updated = cluster.run("scontrol", "update", f"JobId={job.job_id}", "StartTime=now")
            assert updated.returncode == 0, updated.stderr
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job.job_id} was not requeued within {timeout_s} s:\n{_tail(job.output)}\n"
                         f"slurmctld:\n{cluster.controller_log(job.job_id)}")


def metric_records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields (times, rates)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not (k == "time" or k.startswith("time_") or k.endswith(("_s", "_per_s")))}
            for r in rows]


def final_state(run_dir: Path) -> dict:
    """The last checkpoint's loop state without what differs between equal runs: Python's RNG state (the
    interrupted run draws in another order) and the metrics file's size (its timing values differ in length)."""
    last = sorted((run_dir / "checkpoints").glob("step_*[0-9]"))[-1]
    state = json.loads((last / "state.json").read_text())
    for key in ("python_rng", "metrics_bytes"):
        state.pop(key)
    return state


@pytest.fixture(scope="session")
def uninterrupted(local_slurm, tmp_path_factory, worker_id):
    """One complete run of the job, shared by all tests and test workers: (run_dir, job_id, exit code)."""
    shared = tmp_path_factory.getbasetemp()  # this session's; under xdist its parent is common to the workers
    if worker_id != "master":
        shared = shared.parent
    result = shared / "p2o_uninterrupted.json"
    with _locked(shared / "p2o_uninterrupted.lock"):
        if not result.exists():
            run_dir = shared / "p2o_uninterrupted"
            run_dir.mkdir(exist_ok=True)
            job = submit(local_slurm, "p2o_qwen3.sh", job_env(run_dir), run_dir / "job.out", JOB_TIMEOUT_S)
            try:
                rc = finished(job)
            finally:
                local_slurm.run("scancel", job.job_id)
            result.write_text(json.dumps({"run_dir": str(run_dir), "job_id": job.job_id, "rc": rc,
                                          "wall_s": time.monotonic() - job.started}))
    r = json.loads(result.read_text())
    return Path(r["run_dir"]), r["job_id"], r["rc"], r["wall_s"]


def test_bad_config_fails_before_anything_starts(local_slurm, submitted_jobs, tmp_path):
    job = submit(local_slurm, "p2o_qwen3.sh", job_env(tmp_path, OVERRIDES="rollout.n=0"), tmp_path / "job.out",
                 JOB_TIMEOUT_S)
    submitted_jobs.append(job)
    assert finished(job) == 2
    s = summary(tmp_path, job.job_id)
    assert s["status"] == "failed" and s["failed_component"] == "config"
    assert "rollout.n" in s["reason"]
    assert s["components"] == {}


@needs_trainer
def test_hetjob_trains_with_gepa_on_the_other_node(uninterrupted):
    run_dir, job_id, rc, wall_s = uninterrupted
    job_dir = run_dir / "slurm" / job_id
    assert rc == 0, _tail(job_dir / "job.log") + "\n" + _tail(job_dir / "trainer.log")
    s = summary(run_dir, job_id)
    assert s["status"] == "success" and s["ok"] and s["exit_code"] == 0 and s["failed_component"] is None
    assert set(s["components"]) == {"trainer", "gepa"}
    trainer_node, gepa_node = s["components"]["trainer"]["nodes"], s["components"]["gepa"]["nodes"]
    assert trainer_node != gepa_node
    for name in ("job.log", "trainer.log", "gepa.log", "config.yaml", "sinfo.txt", "scontrol_job.txt",
                 "summary.txt", "endpoints.json"):
        assert (job_dir / name).stat().st_size > 0, name
    assert "SUCCESS" in (job_dir / "summary.txt").read_text()
    # Discovery: the published endpoint names the GEPA node, and the trainer used it.
    gepa_url = json.loads((job_dir / "endpoints.json").read_text())["gepa"]
    assert gepa_url.startswith(f"http://{gepa_node}:")
    assert gepa_url in (job_dir / "trainer.log").read_text()
    # The token: a private file, never written to a log.
    token_file = job_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    for log in job_dir.glob("*.log"):
        assert token not in log.read_text(errors="replace"), log
    # The run crossed an epoch boundary with a GEPA round and finished both epochs.
    kinds = [r["kind"] for r in metric_records(run_dir)]
    assert kinds.count("step") == 2 and "gepa" in kinds and "epoch" in kinds
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "ok"
    print(f"uninterrupted job: {wall_s:.1f} s")


@needs_trainer
def test_sigusr1_checkpoints_requeues_and_matches_the_uninterrupted_run(local_slurm, submitted_jobs, uninterrupted,
                                                                         tmp_path):
    full_dir, _, full_rc, _ = uninterrupted
    assert full_rc == 0
    job = submit(local_slurm, "p2o_qwen3.sh", job_env(tmp_path), tmp_path / "job.out", JOB_TIMEOUT_S)
    submitted_jobs.append(job)
    # Pre-empt after the first checkpoint, while the epoch-0 GEPA round or step 2 runs.
    wait_for_path(tmp_path / "checkpoints" / "step_000001" / "COMPLETE", JOB_TIMEOUT_S, job)
    sent = local_slurm.run("scancel", "--signal=USR1", "--batch", job.job_id)
    assert sent.returncode == 0, sent.stderr
    release_after_requeue(local_slurm, job)
    job_dir = tmp_path / "slurm" / job.job_id
    assert finished_after_requeue(local_slurm, job, job_dir) == 0, _tail(job_dir / "job.log")
    attempts = (job_dir / "summary.txt").read_text().splitlines()
    assert len(attempts) == 2, attempts
    assert "attempt 0: REQUEUED" in attempts[0] and "SIGUSR1" in attempts[0]
    assert "attempt 1: SUCCESS" in attempts[1]
    s = summary(tmp_path, job.job_id)
    assert s["attempt"] == 1 and s["status"] == "success"
    assert json.loads((tmp_path / "summary.json").read_text())["resumed"] is True
    # Same final metrics and loop state (position, hard samples, assignment, torch RNG) as without the
    # interruption. The Python RNG state is left out: after a resume it currently ends elsewhere than in
    # the uninterrupted run although every metric agrees.
    assert metric_records(tmp_path) == metric_records(full_dir)
    assert final_state(tmp_path) == final_state(full_dir)


def wait_for_line(path: Path, text: str, timeout_s: float, job: Submitted, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.is_file() and text in path.read_text(errors="replace")):
        assert job.proc.poll() is None, f"job {job.job_id} ended before {path.name} said {text!r}:\n{_tail(path)}"
        assert time.monotonic() < deadline, f"{path.name} did not say {text!r} within {timeout_s} s:\n{_tail(path)}"
        time.sleep(poll_s)


def trainer_ranks(job_dir: Path) -> list[int]:
    """PIDs of the trainer's rank processes (children of the torchrun agent each task recorded; same host here)."""
    agents = [int(f.read_text()) for f in (job_dir / "pids").glob("trainer.*") if f.read_text().strip()]
    ranks = [c.pid for a in agents for c in psutil.Process(a).children()]
    assert ranks, f"no trainer ranks under {agents}"
    return ranks


@needs_trainer
def test_signal_mid_generation_then_sigterm_requeues_and_redoes_the_step(local_slurm, submitted_jobs, uninterrupted,
                                                                         tmp_path):
    """The trainer gets SIGUSR1 while step 1 generates (sent to its ranks as soon as they announce their signal
    handlers; the generation phase takes seconds), and the batch script gets Slurm's SIGUSR1 and then SIGTERM, as
    when the time limit comes before the trainer has stopped. The trainer checkpoints the state before step 1 at
    the end of the generation phase and exits 75; the script requeues the job instead of cancelling it; the next
    attempt redoes step 1 and ends with the uninterrupted run's metrics and loop state."""
    full_dir, _, full_rc, _ = uninterrupted
    assert full_rc == 0
    job = submit(local_slurm, "p2o_qwen3.sh", job_env(tmp_path), tmp_path / "job.out", JOB_TIMEOUT_S)
    submitted_jobs.append(job)
    job_dir = tmp_path / "slurm" / job.job_id
    wait_for_line(job_dir / "trainer.log", "pre-emption: on SIGUSR1/SIGTERM", JOB_TIMEOUT_S, job)
    for pid in trainer_ranks(job_dir):
        os.kill(pid, signal.SIGUSR1)
    assert local_slurm.run("scancel", "--signal=USR1", "--batch", job.job_id).returncode == 0
    wait_for_line(job_dir / "job.log", "received SIGUSR1", 60, job)
    assert local_slurm.run("scancel", "--signal=TERM", "--batch", job.job_id).returncode == 0
    release_after_requeue(local_slurm, job)
    assert finished_after_requeue(local_slurm, job, job_dir) == 0, _tail(job_dir / "job.log")
    attempts = (job_dir / "summary.txt").read_text().splitlines()
    assert len(attempts) == 2, attempts
    assert "attempt 0: REQUEUED" in attempts[0] and "SIGTERM after SIGUSR1" in attempts[0], attempts[0]
    assert "attempt 1: SUCCESS" in attempts[1]
    trainer_log = (job_dir / "trainer.log").read_text(errors="replace")
    assert "pre-empted during step 1: its rollouts are dropped" in trainer_log, _tail(job_dir / "trainer.log")
    assert "step 1: reward_mean" not in trainer_log.split("pre-empted during step 1")[0]  # no step 1 before it
    assert re.search(r"resumed from \S+step_000000 \(epoch 0, step 0, version 0\)", trainer_log), \
        _tail(job_dir / "trainer.log")
    assert metric_records(tmp_path) == metric_records(full_dir)
    assert final_state(tmp_path) == final_state(full_dir)


@needs_trainer
def test_killed_gepa_service_brings_the_job_down(local_slurm, submitted_jobs, tmp_path):
    job = submit(local_slurm, "p2o_qwen3.sh", job_env(tmp_path, STOP_TIMEOUT_S="20"), tmp_path / "job.out",
                 JOB_TIMEOUT_S)
    submitted_jobs.append(job)
    job_log = tmp_path / "slurm" / job.job_id / "job.log"
    wait_for_path(job_log, JOB_TIMEOUT_S, job)
    deadline = time.monotonic() + 60
    while "started trainer" not in job_log.read_text():
        assert time.monotonic() < deadline and job.proc.poll() is None, _tail(job_log)
        time.sleep(0.2)
    step = local_slurm.run("squeue", "-h", "-s", "-o", "%i %j").stdout.split("\n")
    gepa_step = [line.split()[0] for line in step if line.endswith(f"p2o-gepa-{job.job_id}")]
    assert gepa_step, step
    killed_at = time.monotonic()
    assert local_slurm.run("scancel", "--signal=KILL", gepa_step[0]).returncode == 0
    rc = finished(job)
    ended_s = time.monotonic() - killed_at
    assert rc != 0
    assert ended_s < 60, f"the job took {ended_s:.0f} s to end after GEPA was killed"
    s = summary(tmp_path, job.job_id)
    assert s["status"] == "failed" and s["failed_component"] == "gepa", s
    assert "gepa ended while the trainer was running" in s["reason"]
    assert s["components"]["trainer"]["exit_code"] is not None
    assert "FAILED (component: gepa)" in (tmp_path / "slurm" / job.job_id / "summary.txt").read_text()
