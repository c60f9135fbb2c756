"""`GEPAClient`: the trainer's side of the GEPA service (httpx; token from `gepa.token_env` by default).

    client = GEPAClient("http://node17:8431", token=os.environ.get("P2O_GEPA_TOKEN"))
    job_id = client.submit(spec)                       # idempotent by spec.idempotency_key
    status = client.wait(job_id, timeout_s=3600, poll_s=1.0, on_progress=lambda st: log.info("%s", st))
    status.state, status.error                         # a JobStatus (protocol.py), parsed from the service's JSON
    result = client.result(job_id)                     # GEPAResult; result.assignment[pid] -> K templates
    client.retry(job_id, restart=False)                # a failed/cancelled job again, from its last good state

`SubmittedJob` is the trainer's record of a job it submitted (kept in its checkpoint until collected),
`RoundOutcome` what a finished job gives the trainer.

Errors from the service raise `GEPAServiceError` with the HTTP status and the service's message.
Connection errors and 5xx while polling are retried until the wait's deadline (the service may be
restarting); `submit` is safe to retry because of the idempotency key.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from p2o.gepa.core.result import GEPAResult
from p2o.gepa.service.protocol import FINAL_STATES, GEPAJobSpec, JobStatus


@dataclass
class SubmittedJob:
    """A GEPA job the trainer submitted at the end of `epoch` for `policy_version`, over the hard samples
    `hard_ids`; `submitted_at` is a Unix time in seconds."""

    job_id: str
    epoch: int
    policy_version: int
    hard_ids: list[str]
    submitted_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Any) -> SubmittedJob:
        if not isinstance(d, dict):
            raise ValueError(f"a submitted GEPA job must be an object, got {type(d).__name__}")
        missing = [k for k in ("job_id", "epoch", "policy_version", "hard_ids") if k not in d]
        if missing:
            raise ValueError(f"submitted GEPA job {d.get('job_id', '?')}: missing {', '.join(missing)}")
        return SubmittedJob(str(d["job_id"]), int(d["epoch"]), int(d["policy_version"]),
                            [str(i) for i in d["hard_ids"]], float(d.get("submitted_at", 0.0)))


@dataclass
class RoundOutcome:
    """A finished GEPA job, as the trainer uses it: problem id -> K templates ({} when the job failed or found
    none) and the round's metrics (iteration, budget, pool size, best dev score, wall seconds, ...)."""

    assignment: dict[str, list[str]]
    metrics: dict[str, Any]


class GEPAServiceError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"GEPA service: HTTP {status}: {message}")
        self.status = status


class GEPAClient:
    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.http.request(method, path, json=body)
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:500]
            raise GEPAServiceError(resp.status_code, message)
        return resp.json()

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def submit(self, spec: GEPAJobSpec) -> str:
        return self._call("POST", "/v1/jobs", spec.to_dict())["job_id"]

    def status(self, job_id: str) -> JobStatus:
        return JobStatus.from_dict(self._call("GET", f"/v1/jobs/{job_id}"))

    def result(self, job_id: str) -> GEPAResult:
        return GEPAResult.from_dict(self._call("GET", f"/v1/jobs/{job_id}/result"))

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.from_dict(self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def retry(self, job_id: str, restart: bool = False) -> JobStatus:
        """Run a failed or cancelled job again (from its last good state, or from the beginning)."""
        return JobStatus.from_dict(self._call("POST", f"/v1/jobs/{job_id}/retry", {"restart": restart}))

    def wait(self, job_id: str, timeout_s: float = 3600.0, poll_s: float = 1.0,
             on_progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Poll until the job is done, failed or cancelled; returns the final status. Raises TimeoutError."""
        deadline = time.monotonic() + timeout_s
        last: JobStatus | None = None
        while True:
            try:
                st = self.status(job_id)
            except (httpx.TransportError, GEPAServiceError) as e:
                if isinstance(e, GEPAServiceError) and e.status < 500:
                    raise
                st = None
            if st is not None:
                if on_progress is not None and st != last:
                    on_progress(st)
                last = st
                if st.state in FINAL_STATES:
                    return st
            if time.monotonic() >= deadline:
                raise TimeoutError(f"GEPA job {job_id} not finished after {timeout_s} s (last status: {last})")
            time.sleep(poll_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GEPAClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
