"""`JobManager`: GEPA jobs over a run directory, run by background worker threads, resumed after restarts.

    jobs = JobManager(run_dir, endpoints=Endpoints(...), limits=JobLimits()).start()   # re-queues unfinished jobs
    job_id, created = jobs.submit(spec)      # idempotent by spec.idempotency_key
    jobs.status(job_id); jobs.result(job_id); jobs.cancel(job_id); jobs.retry(job_id, restart=False)

Every operation is callable in-process; `server.py` only maps HTTP onto them. A job's search state is
written after every phase (see `search.py`), so a restarted manager continues a killed job from its last
completed evaluation wave with the same random stream: nothing accepted is lost and nothing is charged
twice. While the task-model (or the reflection) endpoint is down the job is `paused` with the cause in
`pause_reason`, and it continues by itself when the endpoint answers again.

Damaged files (see `store.py`): a job whose file fails its checksum resumes from the previous good copy
(`notice` in its status says so); a job whose state is lost (missing after checkpoints were written,
`{}`, garbage, and no good previous copy) is `failed` with the path and the reason, never silently
restarted from iteration 0; `retry(job_id)` runs a failed or cancelled job again from its last good
state, `retry(job_id, restart=True)` from the beginning (the old files are kept aside). A job's broken
files never stop the manager: at start-up every job is loaded on its own, and an unreadable one is
listed as failed with the reason. Resubmitting the same spec (same idempotency key) repairs a job whose
spec file was lost.

Endpoints are built per job by `evaluator_factory(spec, gepa_cfg, reward_cfg, endpoints)` and
`reflector_factory(spec, gepa_cfg, reflection_cfg, endpoints)`; the defaults use `PolicyEvaluator` +
`Verifier` and `ReflectionClient`, with credentials from the service's `Endpoints` only.
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

from p2o.config import GEPAConfig, ReflectionConfig, ReflectionMode, RewardConfig
from p2o.gepa.adapters.endpoints import Endpoints
from p2o.gepa.core.evaluate import Evaluator
from p2o.gepa.core.reflect import Reflector
from p2o.gepa.core.result import GEPAResult, build_result
from p2o.gepa.core.search import Search, SearchHooks, SearchState, dev_count, metric_budget, new_state
from p2o.gepa.service.protocol import DEFAULT_LIMITS, FINAL_STATES, GEPAJobSpec, JobLimits, JobStatus, SpecError
from p2o.gepa.service.store import CorruptRecord, JobStore

log = logging.getLogger(__name__)


class JobNotFound(KeyError):
    pass


class JobNotFinished(RuntimeError):
    pass


class IdempotencyConflict(ValueError):
    pass


class JobStateError(RuntimeError):
    """An operation that the job's state does not allow (e.g. retrying a running job)."""


def round_seed(spec: GEPAJobSpec, gepa: GEPAConfig) -> int:
    """The seed of one round's sampled requests: `gepa.seed` and the policy version the round scores (every round
    of a run has its own; the same round run twice has the same)."""
    from p2o.seeds import derive_seed

    return derive_seed("gepa-round", gepa.seed, spec.policy_version)


def default_evaluator(spec: GEPAJobSpec, gepa: GEPAConfig, reward: RewardConfig, endpoints: Endpoints) -> Evaluator:
    from p2o.gepa.adapters.policy_evaluator import PolicyEvaluator
    from p2o.reward import Verifier

    verifier = Verifier(reward)
    ev = PolicyEvaluator(spec.policy_url, spec.policy_model, verifier, user_template=spec.user_template,
                         system=spec.system, thinking=spec.thinking, temperature=gepa.eval_temperature, n=gepa.eval_n,
                         max_tokens=gepa.eval_max_tokens, min_policy_version=spec.policy_version,
                         concurrency=gepa.eval_concurrency, timeout_s=gepa.eval_timeout_s,
                         api_key=endpoints.api_key(spec.policy_url), seed=round_seed(spec, gepa))
    close = ev.close

    def close_all() -> None:
        close()
        verifier.close()

    ev.close = close_all  # type: ignore[method-assign]
    return ev


def default_reflector(spec: GEPAJobSpec, gepa: GEPAConfig, reflection: ReflectionConfig,
                      endpoints: Endpoints) -> Reflector:
    from p2o.gepa.adapters.reflection_client import ReflectionClient
    from p2o.limits import DEFAULT_REFLECTION_CONTEXT_TOKENS

    if not reflection.context_tokens:  # 0: not derived by the submitter (the trainer always sends its value)
        reflection = dataclasses.replace(reflection, context_tokens=DEFAULT_REFLECTION_CONTEXT_TOKENS)
    # the key variable is the service's choice for this URL ('' = none), never the job's
    keyed = dataclasses.replace(reflection, api_key_env=endpoints.key_env(reflection.base_url))
    # a seed only for the Self-Ref model on our own server; a teacher API may not take one
    client = ReflectionClient(keyed, seed=round_seed(spec, gepa) if reflection.mode == ReflectionMode.SELF else None)
    return Reflector(client, reflection.context_tokens, reflection.max_tokens,
                     max_template_chars=gepa.max_template_chars, concurrency=reflection.concurrency)


def _retry_hint(job_id: str) -> str:
    return (f"POST /v1/jobs/{job_id}/retry to run it again from its last good state, or with "
            '{"restart": true} to start it over')


class JobManager:
    def __init__(self, run_dir: Any, *, workers: int = 1, endpoints: Endpoints | None = None,
                 limits: JobLimits = DEFAULT_LIMITS,
                 evaluator_factory: Callable[..., Evaluator] = default_evaluator,
                 reflector_factory: Callable[..., Reflector] = default_reflector,
                 sleep: Callable[[float], None] = time.sleep):
        self.store = JobStore(run_dir)
        self.workers = workers
        self.endpoints = endpoints or Endpoints()
        self.limits = limits
        self.evaluator_factory, self.reflector_factory = evaluator_factory, reflector_factory
        self.sleep = sleep
        self._lock = threading.Lock()
        self._status: dict[str, JobStatus] = {}
        self._cancel: set[str] = set()
        self._active: set[str] = set()
        """Jobs a worker is running."""
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        for job_id in self.store.job_ids():
            try:
                self._status[job_id] = self._load_status(job_id)
            except Exception as e:  # noqa: BLE001 - one job's files never stop the service
                log.exception("GEPA job %s: could not be loaded", job_id)
                self._status[job_id] = JobStatus(job_id, "failed", error=f"could not load the job: "
                                                 f"{type(e).__name__}: {e}", updated_at=time.time())

    def _parse_spec(self, data: Any) -> GEPAJobSpec:
        return GEPAJobSpec.from_dict(data, self.limits)

    def _load_status(self, job_id: str) -> JobStatus:
        """The job's status from disk; an unreadable status is rebuilt from the spec, or reported as failed."""
        try:
            rec = self.store.read(job_id, "status", JobStatus.from_dict)
        except CorruptRecord as e:
            rec, status_error = None, e
        else:
            status_error = None
        if rec is not None:
            st = rec.value
            if st.job_id != job_id:
                raise ValueError(f"{self.store.path(job_id, 'status')} belongs to job {st.job_id}")
            if rec.recovered:
                st.notice = rec.recovered
            return st
        try:
            spec_rec = self.store.read(job_id, "spec", self._parse_spec)
        except CorruptRecord as e:
            why = f"{status_error or 'status.json missing'}; {e}"
            log.error("GEPA job %s: %s", job_id, why)
            return JobStatus(job_id, "failed", error=f"{why}; submit the same spec again to repair it",
                             updated_at=time.time())
        if spec_rec is None:
            return JobStatus(job_id, "failed", error=f"{self.store.path(job_id, 'spec')}: missing; submit the "
                                                     f"spec again to repair the job", updated_at=time.time())
        spec = spec_rec.value
        gepa, _, _ = spec.configs()
        now = time.time()
        st = JobStatus(job_id, "queued", budget_total=gepa.budget_metric_calls, policy_version=spec.policy_version,
                       idempotency_key=spec.idempotency_key, fingerprint=spec.fingerprint(), created_at=now,
                       updated_at=now, checkpoints=1 if self.store.exists(job_id, "state") else 0,
                       notice=f"status rebuilt from the spec ({status_error or 'status.json missing'})")
        if self.store.exists(job_id, "result"):
            st.state = "done"
        log.warning("GEPA job %s: %s", job_id, st.notice)
        self._persist(st)
        return st

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
    def check(self, spec: GEPAJobSpec) -> None:
        """Limits and the endpoint table for a spec; raises SpecError naming the field."""
        spec.check(self.limits)
        _, reflection, _ = spec.configs()
        for name, url in (("policy_url", spec.policy_url), ("reflection.base_url", reflection.base_url)):
            why = self.endpoints.refusal(url)
            if why:
                raise SpecError(name, why)

    def submit(self, spec: GEPAJobSpec) -> tuple[str, bool]:
        """(job_id, created): a new job, or the existing one for the same idempotency key."""
        self.check(spec)
        fp = spec.fingerprint()
        key = spec.idempotency_key
        job_id = "g" + hashlib.sha256(key.encode()).hexdigest()[:16] if key else "g" + uuid.uuid4().hex[:16]
        with self._lock:
            existing = self._status.get(job_id)
            if existing is not None:
                if existing.fingerprint and existing.fingerprint != fp:
                    raise IdempotencyConflict(f"idempotency_key {key!r} was used for job {job_id} with a different spec")
                if existing.fingerprint and self._spec_readable(job_id):
                    return job_id, False
                self._repair(job_id, existing, spec)
                self._queue.put(job_id)
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

    def _spec_readable(self, job_id: str) -> bool:
        try:
            return self.store.read(job_id, "spec", self._parse_spec) is not None
        except CorruptRecord:
            return False

    def _repair(self, job_id: str, st: JobStatus, spec: GEPAJobSpec) -> None:
        """Rewrite a job's lost spec from a resubmission (the caller holds the lock). Without a known fingerprint
        the old search state cannot be trusted to belong to this spec: it is set aside and the job starts over."""
        if not st.fingerprint:
            aside = self.store.set_aside(job_id, "state", f"orphaned-{int(time.time())}")
            st.checkpoints = 0
            st.notice = f"spec lost; resubmitted, starting over (old state kept as {aside.name})" if aside else \
                "spec lost; resubmitted, starting over"
        else:
            st.notice = "spec lost; resubmitted, resuming from the last good state"
        log.warning("GEPA job %s: %s", job_id, st.notice)
        self.store.write(job_id, "spec", spec.to_dict())
        gepa, _, _ = spec.configs()
        self._update(job_id, state="queued", error="", stop_reason="", pause_reason="", fingerprint=spec.fingerprint(),
                     idempotency_key=spec.idempotency_key, budget_total=gepa.budget_metric_calls,
                     policy_version=spec.policy_version, created_at=st.created_at or time.time())

    def status(self, job_id: str) -> JobStatus:
        """A snapshot of the job's status (a copy: the manager keeps updating its own)."""
        with self._lock:
            st = self._status.get(job_id)
            if st is None:
                raise JobNotFound(job_id)
            return dataclasses.replace(st)

    def list(self) -> list[JobStatus]:
        with self._lock:
            return [dataclasses.replace(s) for s in self._status.values()]

    def result(self, job_id: str) -> GEPAResult:
        st = self.status(job_id)
        if st.state != "done":
            raise JobNotFinished(f"job {job_id} is {st.state}" + (f": {st.error}" if st.error else ""))
        try:
            rec = self.store.read(job_id, "result", GEPAResult.from_dict)
        except CorruptRecord as e:
            raise JobNotFinished(f"job {job_id} is done but its result is unreadable ({e}); "
                                 f"{_retry_hint(job_id)}") from e
        if rec is None:
            raise JobNotFinished(f"job {job_id} is done but {self.store.path(job_id, 'result')} is missing; "
                                 f"{_retry_hint(job_id)}")
        return rec.value

    def cancel(self, job_id: str) -> JobStatus:
        with self._lock:
            st = self._status.get(job_id)
            if st is None:
                raise JobNotFound(job_id)
            if st.state not in FINAL_STATES:
                self._cancel.add(job_id)
                if st.state == "queued":
                    self._update(job_id, state="cancelled", stop_reason="cancelled")
            return dataclasses.replace(st)

    def retry(self, job_id: str, restart: bool = False) -> JobStatus:
        """Run a failed or cancelled (or done, with `restart`) job again: from its last good state, or from the
        beginning with `restart=True` (its state and result are kept aside, not deleted)."""
        with self._lock:
            st = self._status.get(job_id)
            if st is None:
                raise JobNotFound(job_id)
            if st.state not in FINAL_STATES or (st.state == "done" and not restart):
                raise JobStateError(f"job {job_id} is {st.state}; only a failed or cancelled job can be retried "
                                    f"(a done one with restart=true)")
            if not self._spec_readable(job_id):
                raise JobStateError(f"job {job_id}: its spec is unreadable; submit the same spec again to repair it")
            notice = "retried from the last good state"
            if restart:
                tag = f"restart-{int(time.time())}"
                for name in ("state", "result"):
                    self.store.set_aside(job_id, name, tag)
                notice = f"restarted from the beginning (old files kept with the suffix .{tag})"
            self._cancel.discard(job_id)
            self._update(job_id, state="queued", error="", stop_reason="", pause_reason="", notice=notice,
                         **({"checkpoints": 0, "iteration": 0, "budget_used": 0, "metric_calls": 0, "pool_size": 0,
                             "best_dev_score": None, "accepted": 0} if restart else {}))
            out = dataclasses.replace(self._status[job_id])
        self._queue.put(job_id)
        return out

    # ------------------------------------------------------------------ internals
    def _persist(self, st: JobStatus) -> None:
        try:
            self.store.write(st.job_id, "status", st.to_dict())
        except OSError as e:  # e.g. a full disk: the in-memory status stays authoritative
            log.error("GEPA job %s: could not write its status: %s", st.job_id, e)

    def _update(self, job_id: str, **fields: Any) -> None:
        """Update and persist a status; the caller holds `self._lock`."""
        st = self._status[job_id]
        for k, v in fields.items():
            setattr(st, k, v)
        st.updated_at = time.time()
        self._persist(st)

    def _set(self, job_id: str, **fields: Any) -> None:
        with self._lock:
            self._update(job_id, **fields)

    def _progress(self, job_id: str, state: SearchState) -> None:
        self.store.write(job_id, "state", state.to_dict())
        pool = state.pool
        with self._lock:
            checkpoints = self._status[job_id].checkpoints + 1
        self._set(job_id, iteration=state.iteration, budget_used=state.charged, metric_calls=state.metric_calls,
                  pool_size=len(pool), best_dev_score=pool.best().dev_mean if len(pool) else None,
                  accepted=max(0, len(pool) - 1), checkpoints=checkpoints)

    def _work(self) -> None:
        while not self._closing.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                st = self._status.get(job_id)
                if st is None or st.state in FINAL_STATES or job_id in self._active:
                    continue
                self._active.add(job_id)
            try:
                self._run(job_id)
            except Exception as e:  # noqa: BLE001 - a failed job is reported, the service keeps serving
                log.exception("GEPA job %s failed", job_id)
                error = f"{type(e).__name__}: {e}"
                if isinstance(e, CorruptRecord):
                    error = f"{e}; {_retry_hint(job_id)}"
                try:
                    self._set(job_id, state="failed", error=error, pause_reason="")
                except Exception:  # noqa: BLE001
                    log.exception("GEPA job %s: could not record its failure", job_id)
            finally:
                with self._lock:
                    self._active.discard(job_id)
                    requeue = job_id in self._status and self._status[job_id].state == "queued"
                if requeue:  # retried while this worker was finishing it
                    self._queue.put(job_id)

    def _load_state(self, job_id: str, spec: GEPAJobSpec, gepa: GEPAConfig) -> SearchState:
        """The job's resume point; a new state only when the job never wrote one."""
        ids = {p.id for p in spec.problems}

        def parse(d: Any) -> SearchState:
            s = SearchState.from_dict(d)
            if set(s.dev_ids) | set(s.feedback_ids) != ids:
                raise ValueError("its problem ids are not the job's")
            return s

        rec = self.store.read(job_id, "state", parse)
        with self._lock:
            st = self._status[job_id]
            written = st.checkpoints or (1 if st.metric_calls or st.iteration else 0)  # older statuses: progress
        if rec is None:
            if written:
                raise CorruptRecord(self.store.path(job_id, "state"),
                                    f"missing, though the job had written {written} checkpoint(s); not restarting "
                                    f"from iteration 0")
            return new_state(spec.problems, gepa)
        if rec.recovered:
            self._set(job_id, notice=rec.recovered)
        return rec.value

    def _run(self, job_id: str) -> None:
        rec = self.store.read(job_id, "spec", self._parse_spec)
        if rec is None:
            raise CorruptRecord(self.store.path(job_id, "spec"), "missing")
        spec = rec.value
        gepa, reflection, reward = spec.configs()
        state = self._load_state(job_id, spec, gepa)
        self._set(job_id, state="running", pause_reason="")
        evaluator = self.evaluator_factory(spec, gepa, reward, self.endpoints)
        reflector = None
        try:
            reflector = self.reflector_factory(spec, gepa, reflection, self.endpoints)
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
