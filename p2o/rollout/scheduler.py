"""The gateway's core: a priority queue in front of one engine, served in batches by one worker thread.

Semantics (what HTTP clients and the training loop can rely on):
- Priority classes, served strictly in order: training (0) > evaluation (1) > reflection (2); FIFO within a
  class. Each batch is filled from the head of that order up to `max_batch_sequences` sequences (a
  request counts `n`; a request larger than a whole batch goes alone). A training request that arrives
  while a batch of other requests runs is therefore served in the next batch: a flood of lower-priority
  requests delays it by at most one batch.
- Pause/resume: `pause()` waits for the running batch, then puts the engine to sleep; requests keep
  queueing. `resume()` wakes the engine and serves the queue. To have the first batch after a pause mix
  training rollouts with the queued HTTP requests, `submit` the training requests before `resume`.
- Version fence: a request with `min_policy_version = v` is not eligible until the engine's version is
  >= v (weights loaded with `update_weights`); meanwhile later requests overtake it. Every result carries
  the version that produced it. Weight updates never overlap a batch.
- Bounds: at most `max_queue` queued requests from bounded submitters (HTTP); beyond that `QueueFull`
  (HTTP 429). In-process `generate` is unbounded. A queued request past its deadline fails with
  `RequestTimeout` (HTTP 504). After `close()`, queued and new requests fail with `SchedulerClosed` (503).
- Cancellation (`cancel(futures)`, e.g. the HTTP client went away): a queued request is dropped; a running
  one has its `request.cancel` event set, and the engine stops decoding it at its next step (`HFEngine`;
  an engine that does not check the event finishes the batch and the result is discarded).

    sched = Scheduler(engine, max_batch_sequences=64); sched.start()
    futures = sched.submit(requests, priority="training")       # non-blocking
    results = sched.generate(requests, priority="training")     # blocking: list[list[Generation]]
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

from p2o.rollout.engine import Generation, GenerationRequest, RolloutEngine, WeightBucket

log = logging.getLogger(__name__)

PRIORITIES: dict[str, int] = {"training": 0, "evaluation": 1, "reflection": 2}


class QueueFull(RuntimeError):
    """The bounded queue is full (HTTP 429)."""


class SchedulerClosed(RuntimeError):
    """The scheduler is shutting down (HTTP 503)."""


class RequestTimeout(TimeoutError):
    """A request was not served before its deadline (HTTP 504)."""


def priority_value(priority: str | int) -> int:
    """A class name ('training' | 'evaluation' | 'reflection') or its number -> the number."""
    if isinstance(priority, int) and priority in PRIORITIES.values():
        return priority
    if isinstance(priority, str) and priority in PRIORITIES:
        return PRIORITIES[priority]
    raise ValueError(f"priority: got {priority!r}; expected one of {', '.join(PRIORITIES)}")


@dataclass
class _Job:
    request: GenerationRequest
    priority: int
    min_version: int
    deadline: float | None
    order: int
    bounded: bool
    batches_before: int
    """Batches started before this job was queued (to report how many it waited for)."""
    future: Future = field(default_factory=Future)
    enqueued_s: float = field(default_factory=time.monotonic)


@dataclass
class BatchRecord:
    """What one engine call served (kept in `Scheduler.batch_log`)."""

    index: int
    request_ids: list[str]
    priorities: list[int]
    waited_batches: list[int]
    """Per request: batches started after it was queued and before this one (0 = the next batch served it)."""
    sequences: int
    policy_version: int
    duration_s: float
    generated_tokens: int


class Scheduler:
    """Priority/fence/pause scheduling in front of a `RolloutEngine` (see module docstring)."""

    def __init__(self, engine: RolloutEngine, max_batch_sequences: int = 64, max_queue: int = 1024,
                 batch_log_size: int = 1024):
        if max_batch_sequences < 1 or max_queue < 1:
            raise ValueError("max_batch_sequences and max_queue must be >= 1")
        self.engine = engine
        self.max_batch_sequences = max_batch_sequences
        self.max_queue = max_queue
        self.batch_log: deque[BatchRecord] = deque(maxlen=batch_log_size)
        self.counters: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._order = itertools.count()
        self._started = 0
        self._paused = False
        self._holds = 0
        self._running = False
        self._batch: list[_Job] = []
        """The batch the engine is serving (under `_cond`)."""
        self._closed = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> Scheduler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="p2o-rollout-scheduler", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        """Fail queued requests with `SchedulerClosed`, let the running batch finish, stop the worker."""
        with self._cond:
            self._closed = True
            queued, self._queue = self._queue, []
            self._cond.notify_all()
        for job in queued:
            _fail(job, SchedulerClosed("the gateway is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def policy_version(self) -> int:
        return self.engine.policy_version

    def queue_depth(self) -> dict[str, int]:
        with self._cond:
            depth = Counter(j.priority for j in self._queue)
        return {name: depth.get(v, 0) for name, v in PRIORITIES.items()}

    # ------------------------------------------------------------------------------------------ requests
    def submit(self, requests: list[GenerationRequest], priority: str | int = "training", min_policy_version: int = 0,
               timeout_s: float | None = None, bounded: bool = False) -> list[Future]:
        """Queue `requests`; one Future per request resolving to its `n` Generations. Never blocks.

        Raises `QueueFull` (bounded submitters, all-or-nothing) and `SchedulerClosed`.
        """
        prio = priority_value(priority)
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the gateway is shutting down")
            if bounded and sum(j.bounded for j in self._queue) + len(requests) > self.max_queue:
                self.counters["rejected_queue_full"] += 1
                raise QueueFull(f"queue full ({self.max_queue} requests waiting); retry later")
            for r in requests:
                if r.cancel is None:
                    r.cancel = threading.Event()
            jobs = [_Job(r, prio, min_policy_version, deadline, next(self._order), bounded, self._started)
                    for r in requests]
            self._queue.extend(jobs)
            self.counters[f"requests_{_name(prio)}"] += len(jobs)
            self._cond.notify_all()
        return [j.future for j in jobs]

    def generate(self, requests: list[GenerationRequest], priority: str | int = "training", min_policy_version: int = 0,
                 timeout_s: float | None = None) -> list[list[Generation]]:
        """Blocking `submit`: served in the same batches as queued HTTP requests of lower priority."""
        if self._thread is None:
            raise RuntimeError("Scheduler.generate before start()")
        futures = self.submit(requests, priority, min_policy_version, timeout_s)
        return [f.result() for f in futures]

    def cancel(self, futures: list[Future]) -> None:
        """Cancel the requests of these futures: queued ones are dropped; running ones get their
        `request.cancel` event set, and engines that check it stop decoding them at the next step."""
        targets = {id(f) for f in futures}
        with self._cond:
            dropped = [j for j in self._queue if id(j.future) in targets]
            self._queue = [j for j in self._queue if id(j.future) not in targets]
            running = [j for j in self._batch if id(j.future) in targets]
            self.counters["cancelled"] += len(dropped) + len(running)
        for job in running:
            if job.request.cancel is not None:
                job.request.cancel.set()
        for f in futures:
            f.cancel()

    # ------------------------------------------------------------------------------------------ engine phases
    def pause(self) -> None:
        """Stop serving after the running batch and put the engine to sleep; requests keep queueing."""
        with self._cond:
            self._paused = True
            while self._running:
                self._cond.wait()
        if not self.engine.is_sleeping:
            self.engine.sleep()

    def resume(self) -> None:
        """Wake the engine and serve the queue (queued requests first, in priority order)."""
        if self.engine.is_sleeping:
            self.engine.wake_up()
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def update_weights(self, bucket_stream: Iterator[WeightBucket], version: int) -> None:
        """Load new weights between batches (paused or not); requests fenced on `version` become eligible."""
        with self._cond:
            self._holds += 1
            while self._running:
                self._cond.wait()
        try:
            self.engine.load_weights(bucket_stream, version)
            self.counters["weight_updates"] += 1
        finally:
            with self._cond:
                self._holds -= 1
                self._cond.notify_all()

    # ------------------------------------------------------------------------------------------ worker
    def _serve(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                while batch is None:
                    if self._closed:
                        return
                    self._cond.wait(timeout=self._wait_s())
                    batch = self._next_batch()
                self._running = True
                self._batch = batch
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._running = False
                    self._batch = []
                    self._cond.notify_all()

    def _wait_s(self) -> float:
        deadlines = [j.deadline for j in self._queue if j.deadline is not None]
        return max(0.001, min(deadlines) - time.monotonic()) if deadlines else 1.0

    def _next_batch(self) -> list[_Job] | None:
        """Under the lock: expire late jobs, then take eligible jobs in (priority, arrival) order."""
        now = time.monotonic()
        late = [j for j in self._queue if j.deadline is not None and j.deadline <= now]
        if late:
            late_ids = {id(j) for j in late}
            self._queue = [j for j in self._queue if id(j) not in late_ids]
            self.counters["timeouts"] += len(late)
            for job in late:
                _fail(job, RequestTimeout(f"request {job.request.request_id!r} not served within its timeout "
                                          f"(min_policy_version={job.min_version}, current "
                                          f"{self.engine.policy_version})"))
        if self._closed or self._paused or self._holds or not self._queue:
            return None
        version = self.engine.policy_version
        eligible = sorted((j for j in self._queue if j.min_version <= version), key=lambda j: (j.priority, j.order))
        batch: list[_Job] = []
        gone: list[_Job] = []
        seqs = 0
        for job in eligible:
            n = job.request.params.n
            if not job.future.cancelled() and batch and seqs + n > self.max_batch_sequences:
                break
            gone.append(job)
            if job.future.set_running_or_notify_cancel():   # False: cancelled by its client, dropped
                batch.append(job)
                seqs += n
        drop = {id(j) for j in gone}
        self._queue = [j for j in self._queue if id(j) not in drop]
        if batch:
            self._started += 1
        return batch or None

    def _run(self, batch: list[_Job], index: int | None = None) -> None:
        index = self._started - 1 if index is None else index
        start = time.monotonic()
        try:
            results = self.engine.generate([j.request for j in batch])
        except Exception as e:
            if len(batch) > 1:  # find the culprit: serve each request alone, so only it fails
                log.warning("engine.generate failed for a batch of %d requests (%s); retrying one by one",
                            len(batch), e)
                for job in batch:
                    self._run([job], index)
                return
            log.exception("engine.generate failed for request %r", batch[0].request.request_id)
            batch[0].future.set_exception(e)
            return
        tokens = sum(len(g.response_ids) for gens in results for g in gens)
        record = BatchRecord(index, [j.request.request_id for j in batch], [j.priority for j in batch],
                             [index - j.batches_before for j in batch], sum(j.request.params.n for j in batch),
                             self.engine.policy_version, time.monotonic() - start, tokens)
        self.batch_log.append(record)
        self.counters["batches"] += 1
        self.counters["generated_tokens"] += tokens
        for job, gens in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(gens)


def _name(priority: int) -> str:
    return next(k for k, v in PRIORITIES.items() if v == priority)


def _fail(job: _Job, error: Exception) -> None:
    if job.future.set_running_or_notify_cancel():
        job.future.set_exception(error)
