"""The local Slurm test cluster (slurm/testing/start_local_slurm.sh) as a session fixture, and a helper
that submits the real job scripts to it.

The cluster is two slurmd "nodes" on this host (heterogeneous jobs need one node per component). Tests
skip, with the reason, where it cannot run: not root, no Slurm and no apt-get to install it, or an
install that fails. A cluster that was already up is reused and left running.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTING = REPO / "slurm" / "testing"
STATE_DIR = os.environ.get("LOCAL_SLURM_DIR", "/var/tmp/p2o-local-slurm")


@dataclass
class LocalSlurm:
    state_dir: Path
    env: dict[str, str]
    """Environment for Slurm clients and jobs: SLURM_CONF, the venv's bin first on PATH."""

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)

    def controller_log(self, job_id: str, n: int = 30) -> str:
        """The last n lines of slurmctld's log that name job `job_id` (any hetjob component): for failure messages."""
        pattern = re.compile(rf"JobId={re.escape(job_id)}\b")
        try:
            lines = (self.state_dir / "log" / "slurmctld.log").read_text(errors="replace").splitlines()
        except OSError as e:
            return f"(no slurmctld log: {e})"
        return "\n".join([line for line in lines if pattern.search(line)][-n:])


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "the local Slurm cluster needs Linux"
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd and munged run as root without systemd)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="session")
def local_slurm() -> LocalSlurm:
    """Start (or join) the cluster. Test sessions register as users; the last one out stops the cluster,
    unless it was already running before any test session started it."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    state = Path(STATE_DIR)
    users = state / "test-users"
    users.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LOCAL_SLURM_DIR=STATE_DIR, LOCAL_SLURM_NODES="2")
    me = users / str(os.getpid())
    with _locked(state / "test-users.lock"):
        started = subprocess.run(["bash", str(TESTING / "start_local_slurm.sh")], env=env, capture_output=True,
                                 text=True, timeout=300)
        if started.returncode == 2:
            pytest.skip(started.stderr.strip().splitlines()[-1])
        assert started.returncode == 0, f"start_local_slurm.sh failed:\n{started.stderr}"
        if "already running" not in started.stderr:
            (state / "started-by-tests").touch()
        me.touch()
    env["SLURM_CONF"] = f"{STATE_DIR}/etc/slurm.conf"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    yield LocalSlurm(state, env)
    with _locked(state / "test-users.lock"):
        me.unlink(missing_ok=True)
        others = [p for p in users.iterdir() if p.name.isdigit() and Path(f"/proc/{p.name}").exists()]
        if not others and (state / "started-by-tests").exists():
            (state / "started-by-tests").unlink()
            subprocess.run(["bash", str(TESTING / "stop_local_slurm.sh")], env=env, capture_output=True, timeout=120)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Submitted:
    """A job submitted with `sbatch --wait` in the background."""
    proc: subprocess.Popen
    job_id: str
    output: Path
    started: float

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


def submit(cluster: LocalSlurm, script: str, env: dict[str, str], output: Path, timeout_s: int) -> Submitted:
    """`bash slurm/<script> --wait` (submit mode: the script calls sbatch itself) under `timeout`."""
    proc = subprocess.Popen(["timeout", str(timeout_s), "bash", str(REPO / "slurm" / script), "--wait",
                             f"--output={output}"],
                            cwd=REPO, env={**cluster.env, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    t0 = time.monotonic()
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"Submitted batch job (\d+)", line)
        if m:
            return Submitted(proc, m.group(1), output, t0)
    proc.wait()
    raise AssertionError("sbatch did not submit the job:\n" + "".join(lines))


@pytest.fixture
def submitted_jobs(local_slurm):
    """Jobs a test submits; any still known to Slurm afterwards (a failed test) are cancelled."""
    jobs: list[Submitted] = []
    yield jobs
    for job in jobs:
        local_slurm.run("scancel", job.job_id)
        if job.proc.poll() is None:
            job.proc.kill()


def wait_for_path(path: Path, timeout_s: float, job: Submitted) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if job.proc.poll() is not None:
            raise AssertionError(f"job {job.job_id} ended before {path} appeared:\n{_tail(job.output)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout_s} s:\n{_tail(job.output)}")
        time.sleep(0.2)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"
