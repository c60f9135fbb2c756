"""`JobManager`: GEPA jobs over a run directory, run by background worker threads, resumed after restarts.

    jobs = JobManager(run_dir).start()       # re-queues every unfinished job found in run_dir
    job_id, created = jobs.submit(spec)      # idempotent by spec.idempotency_key
    jobs.status(job_id); jobs.result(job_id); jobs.cancel(job_id)

Every operation is callable in-process; `service.py` only maps HTTP onto them. A job's search state is
written after every phase (see `search.py`), so a restarted manager continues a killed job from its last
completed evaluation wave with the same random stream: nothing accepted is lost and nothing is charged
twice. While the task-model (or the reflection) endpoint is down the job is `paused` with the cause in
`pause_reason`, and it continues by itself when the endpoint answers again.

Endpoints are built per job by `evaluator_factory(spec, gepa_cfg, reward_cfg)` and
`reflector_factory(spec, gepa_cfg, reflection_cfg)`; the defaults use `PolicyEvaluator` + `Verifier` and
`ReflectionClient`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from p2o.config import GEPAConfig, ReflectionConfig, RewardConfig
from p2o.gepa.evaluate import Evaluator
from p2o.gepa.protocol import FINAL_STATES, GEPAJobSpec, JobStatus
from p2o.gepa.reflect import Reflector
from p2o.gepa.result import GEPAResult, build_result
from p2o.gepa.search import Search, SearchHooks, SearchState, dev_count, metric_budget, new_state
from p2o.gepa.store import JobStore

log = logging.getLogger(__name__)


class JobNotFound(KeyError):
    pass


class JobNotFinished(RuntimeError):
    pass


class IdempotencyConflict(ValueError):
    pass


def default_evaluator(spec: GEPAJobSpec, gepa: GEPAConfig, reward: RewardConfig) -> Evaluator:
    import os

    from p2o.gepa.policy_evaluator import PolicyEvaluator
    from p2o.reward import Verifier

    verifier = Verifier(reward)
    ev = PolicyEvaluator(spec.policy_url, spec.policy_model, verifier, user_template=spec.user_template,
                         system=spec.system, thinking=spec.thinking, temperature=gepa.eval_temperature, n=gepa.eval_n,
                         max_tokens=gepa.eval_max_tokens, min_policy_version=spec.policy_version,
                         concurrency=gepa.eval_concurrency, timeout_s=gepa.eval_timeout_s,
                         api_key=os.environ.get(spec.policy_api_key_env, "") if spec.policy_api_key_env else "none")
    close = ev.close

    def close_all() -> None:
        close()
        verifier.close()

    ev.close = close_all  # type: ignore[method-assign]
    return ev


def default_reflector(spec: GEPAJobSpec, gepa: GEPAConfig, reflection: ReflectionConfig) -> Reflector:
    from p2o.gepa.reflect_client import ReflectionClient
    from p2o.limits import DEFAULT_REFLECTION_CONTEXT_TOKENS

    if not reflection.context_tokens:  # 0: not derived by the submitter (the trainer always sends its value)
        reflection = dataclasses.replace(reflection, context_tokens=DEFAULT_REFLECTION_CONTEXT_TOKENS)
    client = ReflectionClient(reflection)
    return Reflector(client, reflection.context_tokens, reflection.max_tokens,
                     max_template_chars=gepa.max_template_chars, concurrency=reflection.concurrency)


class JobManager:
    def __init__(self, run_dir: Any, *, workers: int = 1,
                 evaluator_factory: Callable[..., Evaluator] = default_evaluator,
                 reflector_factory: Callable[..., Reflector] = default_reflector,
                 sleep: Callable[[float], None] = time.sleep):
        self.store = JobStore(run_dir)
        self.workers = workers
        self.evaluator_factory, self.reflector_factory = evaluator_factory, reflector_factory
        self.sleep = sleep
        self._lock = threading.Lock()
        self._status: dict[str, JobStatus] = {}
        self._cancel: set[str] = set()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        for job_id in self.store.job_ids():
            d = self.store.read(job_id, "status")
            if d:
                self._status[job_id] = JobStatus.from_dict(d)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> JobManager:
        for job_id, st in sorted(self._status.items(), key=lambda kv: kv[1].created_at):
            if st.state not in FINAL_STATES:
                log.info("resuming GEPA job %s (was %s)", job_id, st.state)
                self._queue.put(job_id)
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"p2o-gepa-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop taking jobs (a running job keeps its last checkpoint and resumes at the next start)."""
        self._closing.set()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout_s)

    # ------------------------------------------------------------------ operations
    def submit(self, spec: GEPAJobSpec) -> tuple[str, bool]:
        """(job_id, created): a new job, or the existing one for the same idempotency key."""
        spec.check()
        fp = spec.fingerprint()
        key = spec.idempotency_key
        job_id = "g" + hashlib.sha256(key.encode()).hexdigest()[:16] if key else "g" + uuid.uuid4().hex[:16]
        with self._lock:
            existing = self._status.get(job_id)
            if existing is not None:
                if existing.fingerprint != fp:
                    raise IdempotencyConflict(f"idempotency_key {key!r} was used for job {job_id} with a different spec")
                return job_id, False
            gepa, _, _ = spec.configs()
            now = time.time()
            budget = metric_budget(gepa, dev_count(len(spec.problems), gepa.dev_size))
            st = JobStatus(job_id, "queued", budget_total=budget, policy_version=spec.policy_version,
                           idempotency_key=key, fingerprint=fp, created_at=now, updated_at=now)
            self.store.write(job_id, "spec", spec.to_dict())
            self.store.write(job_id, "status", st.to_dict())
            self._status[job_id] = st
        self._queue.put(job_id)
        return job_id, True

    def status(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            st = self._status.get(job_id)
            if st is None:
                raise JobNotFound(job_id)
            return st.to_dict()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.to_dict() for s in self._status.values()]

    def result(self, job_id: str) -> GEPAResult:
        st = self.status(job_id)
        if st["state"] != "done":
            raise JobNotFinished(f"job {job_id} is {st['state']}" + (f": {st['error']}" if st["error"] else ""))
        return GEPAResult.from_dict(self.store.read(job_id, "result"))

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            st = self._status.get(job_id)
            if st is None:
                raise JobNotFound(job_id)
            if st.state not in FINAL_STATES:
                self._cancel.add(job_id)
                if st.state == "queued":
                    self._update(job_id, state="cancelled", stop_reason="cancelled")
            return st.to_dict()

    # ------------------------------------------------------------------ internals
    def _update(self, job_id: str, **fields: Any) -> None:
        """Update and persist a status; the caller holds `self._lock`."""
        st = self._status[job_id]
        for k, v in fields.items():
            setattr(st, k, v)
        st.updated_at = time.time()
        self.store.write(job_id, "status", st.to_dict())

    def _set(self, job_id: str, **fields: Any) -> None:
        with self._lock:
            self._update(job_id, **fields)

    def _progress(self, job_id: str, state: SearchState) -> None:
        self.store.write(job_id, "state", state.to_dict())
        pool = state.pool
        self._set(job_id, iteration=state.iteration, budget_used=state.charged, metric_calls=state.metric_calls,
                  pool_size=len(pool), best_dev_score=pool.best().dev_mean if len(pool) else None,
                  accepted=max(0, len(pool) - 1))

    def _work(self) -> None:
        while not self._closing.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                st = self._status.get(job_id)
                if st is None or st.state in FINAL_STATES:
                    continue
            try:
                self._run(job_id)
            except Exception as e:  # noqa: BLE001 - a failed job is reported, the service keeps serving
                log.exception("GEPA job %s failed", job_id)
                self._set(job_id, state="failed", error=f"{type(e).__name__}: {e}", pause_reason="")

    def _run(self, job_id: str) -> None:
        spec = GEPAJobSpec.from_dict(self.store.read(job_id, "spec"))
        gepa, reflection, reward = spec.configs()
        saved = self.store.read(job_id, "state")
        state = SearchState.from_dict(saved) if saved else new_state(spec.problems, gepa)
        self._set(job_id, state="running", pause_reason="")
        evaluator = self.evaluator_factory(spec, gepa, reward)
        reflector = None
        try:
            reflector = self.reflector_factory(spec, gepa, reflection)
            hooks = SearchHooks(
                checkpoint=lambda s: self._progress(job_id, s),
                should_stop=lambda: "cancelled" if job_id in self._cancel else None,
                on_pause=lambda reason: self._set(job_id, state="paused", pause_reason=reason),
                on_resume=lambda: self._set(job_id, state="running", pause_reason=""),
                sleep=self.sleep)
            Search(spec.problems, gepa, evaluator, reflector, state, spec.user_template, hooks).run()
        finally:
            for closable in (evaluator, getattr(reflector, "complete", None)):
                close = getattr(closable, "close", None)
                if close:
                    close()
        if state.stop_reason == "cancelled":
            self._set(job_id, state="cancelled", stop_reason="cancelled", pause_reason="")
            return
        result = build_result(state, spec.k, gepa.seed, metric_budget(gepa, len(state.dev_ids)), gepa.accounting,
                              spec.same_template_in_group, spec.leave_one_untemplated, spec.policy_version,
                              gepa.solved_at)
        self.store.write(job_id, "result", result.to_dict())
        self._set(job_id, state="done", stop_reason=state.stop_reason, pause_reason="")
        log.info("GEPA job %s done: %s, %d iterations, pool %d, %d metric calls", job_id, state.stop_reason,
                 state.iteration, len(state.pool), state.metric_calls)
