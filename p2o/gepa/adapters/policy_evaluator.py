"""`PolicyEvaluator`: scores (template, problem) pairs with the current policy behind an OpenAI-compatible endpoint.

Each pair is one `/v1/chat/completions` request through the `openai` client, built exactly as the trainer
builds prompts (`p2o.prompts.messages(question, template, user_template, system)`), with body extras

    chat_template_kwargs = {"enable_thinking": thinking == "on"}
    min_policy_version   = the policy version the job was submitted for (the gateway waits for it)
    priority             = "evaluation"

and `temperature`/`n`/`max_tokens` from the job's GEPA config (greedy, one sample by default). With
`seed` set, each request also carries `seed = derive_seed(seed, problem id)` (`p2o.seeds`): the samples
do not depend on the order the concurrent requests arrive in. A wave is
sent with at most `concurrency` requests in flight; all responses are then verified with one
`scorer.score_many` call (`p2o.reward.Verifier`). The score of a pair is the fraction of its `n` responses
the verifier accepts.

Connection errors, timeouts, 429, 5xx and 401/403 make the pair *unavailable* (`EvalOutcome.error`): the
search pauses and retries it. Any other 4xx is our own gateway refusing the request for good (max_tokens,
n or the prompt over its limits, the body too large, an unknown model): `evaluate` raises `RequestRefused`
naming the limit and the config keys behind it (see `refusal_message`), and the GEPA job fails. It is never
scored 0: a refused request says nothing about the candidate, and scoring every refusal as 0 is how a
limit mismatch once made every child look useless and the run silently plain GRPO.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import openai

from p2o.gepa.core.evaluate import EvalItem, EvalOutcome, RequestRefused
from p2o.prompts import DEFAULT_USER_TEMPLATE, messages
from p2o.seeds import derive_seed

log = logging.getLogger(__name__)

_UNAVAILABLE_STATUS = {401, 403, 408, 429}


class Scorer(Protocol):
    """What `p2o.reward.Verifier` offers: verdicts (`.correct`, `.extracted`, `.reason`) in input order."""

    def score_many(self, pairs: list[tuple[str, str]]) -> list[Any]: ...


def v1_url(base_url: str) -> str:
    """The OpenAI client's base URL: `base_url` with a trailing /v1 (added when missing)."""
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def classify_error(e: Exception) -> tuple[bool, str]:
    """(unavailable?, description) for an exception raised by the openai client."""
    if isinstance(e, openai.APIStatusError):
        status = e.status_code
        text = f"HTTP {status}: {str(e)[:300]}"
        return status >= 500 or status in _UNAVAILABLE_STATUS, text
    if isinstance(e, (openai.APIConnectionError, openai.APITimeoutError)):
        cause = e.__cause__ or e
        return True, f"{type(e).__name__}: {cause}"[:300]
    return False, f"{type(e).__name__}: {e}"[:300]


def error_detail(e: openai.APIStatusError) -> tuple[str, str]:
    """(message, param) of an OpenAI-style error body."""
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
    return str(err.get("message") or e.message or e)[:500], str(err.get("param") or "")


def refusal_message(status: int, message: str, param: str, item: EvalItem, max_tokens: int, n: int) -> str:
    """Why a scoring request was refused, with the config keys that size it."""
    what = {
        "max_tokens": f"gepa.eval_max_tokens = {max_tokens} must fit the policy gateway's max_tokens limit "
                      "(rollout.gateway_max_tokens; 0 derives it from gepa.eval_max_tokens)",
        "n": f"gepa.eval_n = {n} must fit the policy gateway's n limit (max of rollout.max_batch_size, rollout.n "
             "and gepa.eval_n)",
        "prompt": f"the scoring prompt T(x, z) of problem {item.problem.id!r} with a template of "
                  f"{len(item.template)} characters must fit rollout.max_prompt_tokens (templates are at most "
                  "reflection.max_tokens / gepa.max_template_chars long)",
    }.get(param)
    if what is None and status == 413:
        what = "the request body must fit rollout.gateway_max_body_bytes"
    if what is None and status == 404:
        what = "the job's policy_model must be the model the policy gateway serves"
    return (f"the policy endpoint refused a scoring request with HTTP {status}: {message} -- a configuration "
            f"error: {what or 'the request GEPA sends does not fit the gateway'}")


class PolicyEvaluator:
    def __init__(self, base_url: str, model: str, scorer: Scorer, *, user_template: str = DEFAULT_USER_TEMPLATE,
                 system: str = "", thinking: str = "off", temperature: float = 0.0, n: int = 1,
                 max_tokens: int = 64, min_policy_version: int | None = None, concurrency: int = 64,
                 timeout_s: float = 600.0, api_key: str = "none", priority: str = "evaluation",
                 seed: int | None = None):
        self.client = openai.OpenAI(base_url=v1_url(base_url), api_key=api_key or "none", max_retries=0,
                                    timeout=timeout_s)
        self.model, self.scorer = model, scorer
        self.user_template, self.system, self.thinking = user_template, system, thinking
        self.temperature, self.n, self.max_tokens = temperature, n, max_tokens
        self.min_policy_version, self.concurrency, self.priority = min_policy_version, concurrency, priority
        self.seed = seed

    def _extra_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": self.thinking == "on"}}
        if self.min_policy_version is not None:
            body["min_policy_version"] = self.min_policy_version
        if self.priority:
            body["priority"] = self.priority
        return body

    def _generate(self, item: EvalItem) -> tuple[list[str], int | None, str, bool]:
        """(response texts, policy version, error, unavailable?); a refused request raises RequestRefused."""
        try:
            resp = self.client.chat.completions.create(
                model=self.model, messages=messages(item.problem.question, item.template, self.user_template,
                                                    self.system),
                temperature=self.temperature, n=self.n, max_tokens=self.max_tokens, extra_body=self._extra_body(),
                seed=derive_seed(self.seed, item.problem.id) if self.seed is not None else openai.NOT_GIVEN)
        except Exception as e:  # noqa: BLE001 - classified below
            unavailable, text = classify_error(e)
            if not unavailable and isinstance(e, openai.APIStatusError) and 400 <= e.status_code < 500:
                message, param = error_detail(e)
                raise RequestRefused(refusal_message(e.status_code, message, param, item, self.max_tokens,
                                                     self.n)) from e
            return [], None, text, unavailable
        texts = [(c.message.content or "") for c in resp.choices]
        version = (resp.model_extra or {}).get("policy_version")
        return texts, (int(version) if version is not None else None), "", False

    def evaluate(self, items: Sequence[EvalItem]) -> list[EvalOutcome]:
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(items)))) as pool:
            generated = list(pool.map(self._generate, items))  # re-raises the first RequestRefused
        pairs, owners = [], []
        for k, (texts, _, _, _) in enumerate(generated):
            for t in texts:
                pairs.append((t, items[k].problem.answer))
                owners.append(k)
        verdicts = self.scorer.score_many(pairs) if pairs else []
        per_item: list[list[Any]] = [[] for _ in items]
        for k, v in zip(owners, verdicts, strict=True):
            per_item[k].append(v)
        out = []
        for k, (texts, version, error, unavailable) in enumerate(generated):
            if unavailable:
                out.append(EvalOutcome(error=error))
            elif error or not texts:  # a 200 without choices: the endpoint answered, with nothing to score
                out.append(EvalOutcome(score=0.0, reason=f"no answer: {error or 'no choices returned'}",
                                       policy_version=version))
            else:
                vs = per_item[k]
                first = vs[0]
                out.append(EvalOutcome(score=sum(1.0 for v in vs if v.correct) / len(vs), response=texts[0],
                                       extracted=first.extracted, reason=first.reason, policy_version=version))
        return out

    def close(self) -> None:
        self.client.close()
