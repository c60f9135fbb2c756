"""GEPA prompt evolution for hard samples (P2O's epoch-end phase), as a library and as a resumable service.

Three layers, each importing only those below it:
- `core`: the algorithm, pure (no network, files or subprocesses): `pool` (candidates, per-instance fronts,
  parent selection), `search` (the loop, budget, resumable state), `reflect` (meta-prompt, context fitting,
  parsing, the `Reflector`), `assign` (greedy set cover, K-template assignment), `evaluate` (the `Evaluator`
  protocol), `result` (`GEPAResult`).
- `adapters`: the core's seams over OpenAI-compatible endpoints: `policy_evaluator` (task model behind the
  gateway + the verifier), `reflection_client` (reflection endpoint: retries, backoff, circuit breaker),
  `endpoints` (which URLs get which credentials).
- `service`: `protocol` (job spec and status records), `store` + `jobs` (job manager over a run directory),
  `server` (HTTP routes), `client` (`GEPAClient`), `cli` (`p2o gepa-serve`).
See docs/gepa.md.
"""
