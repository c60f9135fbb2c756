"""GEPA prompt evolution for hard samples (P2O's epoch-end phase), as a library and as a resumable service.

Pure core (no HTTP library): `pool` (candidates, per-instance fronts, parent selection), `search` (the loop,
budget, resumable state), `reflect` (meta-prompt, context fitting, parsing, the `Reflector`), `assign`
(greedy set cover, K-template assignment), `evaluate` (the `Evaluator` protocol), `result` (`GEPAResult`).
Adapters: `policy_evaluator` (task model behind an OpenAI-compatible gateway + the verifier),
`reflect_client` (OpenAI-compatible reflection endpoint: retries, backoff, circuit breaker).
Service: `protocol` (job spec and status records), `jobs` (job manager over a run directory), `service`
(HTTP routes), `client` (`GEPAClient`), `cli` (`p2o gepa-serve`). See docs/gepa.md.
"""
