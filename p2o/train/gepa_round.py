"""One GEPA round of P2O, seen from the trainer: the epoch's hard samples go to the GEPA service as a job; its
outcome (templates per hard sample) comes back before the next epoch (`p2o.gepa_mode=sync`) or while it trains
(`async`). The trainer decides when (`p2o.train.loop`); this part builds the job and reads the outcome (rank 0).

The job record (`submit`'s `SubmittedJob`: job id, epoch, policy version, hard sample ids, submission time) is
kept in the checkpointed loop state, so a resumed run collects the job it submitted.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from p2o.algo.hard_samples import HardStore
from p2o.config import RunConfig
from p2o.gepa.service.client import RoundOutcome, SubmittedJob
from p2o.gepa.service.protocol import JobStatus

log = logging.getLogger(__name__)


class GEPARound(Protocol):
    def submit(self, hard: HardStore, epoch: int, policy_version: int) -> SubmittedJob:
        """Send the hard samples to the service; returns the job record (kept in the checkpointed loop state)."""

    def poll(self, job: SubmittedJob) -> RoundOutcome | None:
        """The job's outcome if it has ended, else None (returns at once)."""

    def wait(self, job: SubmittedJob) -> RoundOutcome:
        """Block until the job ends; its outcome. Run it while the engines serve (`RolloutService.serve_while`):
        the service scores candidates with the current policy through the gateway."""


class ServiceGEPARound:
    """`GEPARound` over a GEPA service (`p2o.gepa.service.client.GEPAClient`). `policy_url` is the policy gateway's base
    URL, `reflection_url` the Self-Ref gateway's (None: the configured reflection endpoint), both reachable from
    the service's node."""

    def __init__(self, cfg: RunConfig, run_dir: Path, client: Any, policy_url: str, reflection_url: str | None = None):
        self.cfg, self.run_dir, self.client = cfg, run_dir, client
        self.policy_url, self.reflection_url = policy_url, reflection_url

    def submit(self, hard: HardStore, epoch: int, policy_version: int) -> SubmittedJob:
        from p2o.gepa.service.protocol import DEFAULT_LIMITS, FAILED_RESPONSE_TAIL_CHARS, GEPAJobSpec, job_section

        cfg = self.cfg
        samples = list(hard.samples.values())
        tails = {s.problem.id: [r[-FAILED_RESPONSE_TAIL_CHARS:] for r in s.failed_responses]
                 [:DEFAULT_LIMITS.max_responses_per_problem] for s in samples}
        spec = GEPAJobSpec(
            problems=[s.problem for s in samples], failed_responses=tails,
            policy_version=policy_version, policy_url=self.policy_url + "/v1", policy_model="policy",
            reflection=self.reflection_settings(), gepa=job_section("gepa", cfg.gepa),
            reward=job_section("reward", cfg.reward), k=cfg.rollout.n,
            user_template=cfg.prompt.user_template, system=cfg.prompt.system, thinking=cfg.model.thinking,
            idempotency_key=f"{self.run_dir.resolve()}::epoch{epoch}",
            same_template_in_group=cfg.p2o.same_template_in_group,
            leave_one_untemplated=cfg.p2o.leave_one_untemplated,
        )
        job_id = self.client.submit(spec)
        log.info("epoch %d: GEPA job %s submitted with %d hard samples (policy version %d)", epoch, job_id,
                 len(samples), policy_version)
        return SubmittedJob(job_id, epoch, policy_version, [s.problem.id for s in samples], time.time())

    def reflection_settings(self) -> dict:
        """The job's reflection section: the configured one (no credential fields), pointed at the Self-Ref
        gateway in `self` mode."""
        from p2o.gepa.service.protocol import job_section

        r = job_section("reflection", self.cfg.reflection)  # the service's endpoint table chooses keys
        if self.reflection_url is not None:  # Self-Ref served by this run
            r["base_url"] = f"{self.reflection_url}/v1"
            r["model"] = "reflection"
        return r

    def poll(self, job: SubmittedJob) -> RoundOutcome | None:
        return self._outcome(job, self.client.status(job.job_id))

    def wait(self, job: SubmittedJob) -> RoundOutcome:
        from p2o.telemetry.progress import progress

        with progress(f"GEPA {job.job_id}", total=None, enabled=self.cfg.logging.progress, unit="call") as bar:
            def on_progress(st: JobStatus) -> None:
                bar.total = st.budget_total or bar.total
                bar.n = st.budget_used or 0
                bar.set_postfix_str(_progress_line(st), refresh=True)
                log.debug("GEPA %s: %s", job.job_id, _progress_line(st))

            status = self.client.wait(job.job_id, timeout_s=float("inf"), poll_s=self.cfg.gepa.poll_interval_s,
                                      on_progress=on_progress)
        log.info("GEPA %s: %s", job.job_id, _progress_line(status))
        outcome = self._outcome(job, status)
        if outcome is None:
            raise RuntimeError(f"GEPA job {job.job_id}: the wait returned in state {status.state!r}")
        return outcome

    def _outcome(self, job: SubmittedJob, status: JobStatus) -> RoundOutcome | None:
        state = status.state
        if state not in ("done", "failed", "cancelled"):
            return None
        metrics = {k: getattr(status, k) for k in ("iteration", "budget_used", "budget_total", "pool_size",
                                                    "best_dev_score")}
        metrics["gepa_wall_s"] = time.time() - (job.submitted_at or time.time())
        if state != "done":
            from p2o.gepa.core.evaluate import is_refusal

            if state == "failed" and is_refusal(status.error or ""):  # every later round would fail alike
                raise RuntimeError(f"GEPA job {job.job_id} failed on a configuration error (p2o train --dry-run "
                                   f"prints the limits): {status.error}")
            log.warning("GEPA job %s ended %s: %s; no templates from it", job.job_id, state, status.error)
            return RoundOutcome({}, {**metrics, "failed": 1})
        result = self.client.result(job.job_id)
        assignment = {pid: list(z) for pid, z in result.assignment.items() if z}
        metrics["covered_templates"] = len({t for z in assignment.values() for t in z if t})
        return RoundOutcome(assignment, metrics)


def _progress_line(status: JobStatus) -> str:
    keys = ("state", "iteration", "budget_used", "budget_total", "pool_size", "best_dev_score")
    return " ".join(f"{k}={getattr(status, k)}" for k in keys if getattr(status, k) is not None)


# ---------------------------------------------------------------------------- the service as a child process
def endpoint_args(cfg: RunConfig, policy_url: str, reflection_url: str | None) -> list[str]:
    """`p2o gepa-serve` flags registering this run's endpoints and the variables holding their keys."""
    args: list[str] = []
    gateway_key = cfg.rollout.gateway_token_env if os.environ.get(cfg.rollout.gateway_token_env) else ""
    named = [("policy", policy_url + "/v1", gateway_key)]
    if reflection_url is not None:
        named.append(("reflection", reflection_url + "/v1", gateway_key))
    elif cfg.reflection.base_url:
        key = cfg.reflection.api_key_env if os.environ.get(cfg.reflection.api_key_env) else ""
        named.append(("reflection", cfg.reflection.base_url, key))
    for name, url, key in named:
        args += ["--endpoint", f"{name}={url}"] + (["--endpoint-key-env", f"{name}={key}"] if key else [])
    return args


def start_gepa_service(run_dir: Path, token_env: str, endpoints: list[str]) -> tuple[subprocess.Popen, str]:
    """`p2o gepa-serve` as a child process on 127.0.0.1 (with this run's endpoints); returns (process, base URL)."""
    d = run_dir / "gepa_service"
    d.mkdir(parents=True, exist_ok=True)
    endpoint = d / "endpoint"
    endpoint.unlink(missing_ok=True)
    log_file = open(d / "service.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "p2o.cli", "gepa-serve", "--host", "127.0.0.1", "--port", "0",
                             "--run-dir", str(d), "--endpoint-file", str(endpoint), "--token-env", token_env,
                             *endpoints],
                            stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.time() + 120
    while not endpoint.is_file() or not endpoint.read_text().strip():
        if proc.poll() is not None:
            raise RuntimeError(f"the GEPA service exited with code {proc.returncode}; see {d / 'service.log'}")
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"the GEPA service did not start within 120 s; see {d / 'service.log'}")
        time.sleep(0.2)
    url = endpoint.read_text().strip()
    return proc, url if url.startswith("http") else f"http://{url}"
