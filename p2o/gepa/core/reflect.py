"""Reflective mutation: the meta-prompt, fitting it into the reflection model's context, parsing the answer.

The meta-prompt follows GEPA's default structure: the current template in a fenced block, then the
minibatch examples in a fenced block (each `# Example i` with `## Inputs` = the user text of the problem
without template, `## Generated Outputs` = the policy's response under the parent template, `## Feedback`
= correct/incorrect, the gold answer, the verifier's reason and the reward), then the instructions (infer
the task, keep niche domain facts and generalisable strategies) and the request for a new template inside
a fenced block.

Length control (budget = `context_tokens - max_tokens - PROMPT_MARGIN_TOKENS`): responses without an
extracted answer are cut to 100 head + 100 tail tokens; if the prompt is still too long every response is
cut to an equal share (half head, half tail, with a marker); if it still does not fit, examples are dropped
from the end. Tokens are counted with a tokenizer when one is given, else approximated as chars / 3.5.

Parsing (`parse_template`): reasoning (`<think>...</think>`, or anything up to a stray `</think>`) is removed;
the LAST non-empty complete fenced block wins; a language tag on the opening fence (```text, ```markdown)
is dropped; an unclosed final fence is accepted unless the answer was cut off by the token limit. Empty,
missing, cut-off or over-long results are "unusable": counted and skipped by the search, never raised.

`Reflector` turns `ReflectionRequest`s into `Proposal`s concurrently through an injected `complete(prompt)`
function (the OpenAI-compatible client in `p2o.gepa.adapters.reflection_client`, or a scripted one in tests). A failed
call is a "failed" proposal, except a refused one (`RequestRefused`: a limit that does not fit, a
configuration error), which propagates and fails the GEPA job. When the endpoint reports the meta-prompt as
too long with its token counts (`PromptTooLong`) and its limit is at least the configured budget, our
approximate count came out low (e.g. on digit-heavy text): the prompt is fitted once more to the reported
count. A limit below the configured budget is a mismatch between reflection.context_tokens and the
endpoint, and is raised at once.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from p2o.gepa.core.evaluate import RequestRefused

log = logging.getLogger(__name__)

PROMPT_MARGIN_TOKENS = 64
FORMAT_ERROR_KEEP_TOKENS = 100
TRUNCATION_MARKER = "\n[... truncated ...]\n"

META_PROMPT_HEAD = "I provided an assistant with the following instructions to perform a task for me:\n```\n"
META_PROMPT_MIDDLE = (
    "\n```\n\nThe following are examples of different task inputs provided to the assistant along with the "
    "assistant's response for each of them, and some feedback on how the assistant's response could be better:\n"
    "```\n")
META_PROMPT_TAIL = (
    "\n```\n\nYour task is to write a new instruction for the assistant.\n\n"
    "Read the inputs carefully and identify the input format and infer detailed task description about the task "
    "I wish to solve with the assistant.\n\n"
    "Read all the assistant responses and the corresponding feedback. Identify all niche and domain specific "
    "factual information about the task and include it in the instruction, as a lot of it may not be available "
    "to the assistant in the future. The assistant may have utilized a generalizable strategy to solve the task, "
    "if so, include that in the instruction as well.\n\n"
    "Provide the new instructions within ``` blocks.")


# ----------------------------------------------------------------------------- records
@dataclass
class ReflectionExample:
    """One minibatch problem as shown to the reflection model."""

    inputs: str
    """The user text of the problem (no template)."""
    output: str
    """The policy's response under the parent template."""
    answer: str
    """Gold answer."""
    correct: bool
    extracted: str | None
    """The verifier's extracted answer (None: no final answer found)."""
    reason: str
    """The verifier's reason string."""
    score: float


@dataclass
class ReflectionRequest:
    template: str
    examples: list[ReflectionExample]


@dataclass
class Completion:
    """What a chat completion returned: `text` (message content; may be None) and the reasoning channel."""

    text: str | None
    reasoning: str | None = None
    finish_reason: str = "stop"


class CompletionFailed(Exception):
    """The call failed for good (retries exhausted or a non-retryable error)."""


class CompletionUnavailable(CompletionFailed):
    """The endpoint is considered down (circuit breaker open): the call was not attempted."""


class PromptTooLong(RequestRefused):
    """The endpoint refused the meta-prompt as longer than its context; `prompt_tokens` and `limit` are the
    counts it reported (None when its message gives none)."""

    def __init__(self, message: str, prompt_tokens: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.prompt_tokens, self.limit = prompt_tokens, limit


@dataclass
class Proposal:
    """status: ok | unusable | failed | unavailable; `template` is set only when ok."""

    status: str
    template: str = ""
    detail: str = ""
    raw: str = ""


# ----------------------------------------------------------------------------- token counting
class TokenCounter(Protocol):
    def count(self, text: str) -> int: ...
    def head(self, text: str, n: int) -> str: ...
    def tail(self, text: str, n: int) -> str: ...


class ApproxTokens:
    """Approximate tokens as ceil(chars / chars_per_token)."""

    def __init__(self, chars_per_token: float = 3.5):
        self.cpt = chars_per_token

    def count(self, text: str) -> int:
        return math.ceil(len(text) / self.cpt)

    def head(self, text: str, n: int) -> str:
        return text[:max(0, int(n * self.cpt))]

    def tail(self, text: str, n: int) -> str:
        k = max(0, int(n * self.cpt))
        return text[len(text) - k:] if k else ""


class TokenizerTokens:
    """Exact counts with a HF tokenizer (e.g. the reflection model's)."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def count(self, text: str) -> int:
        return len(self._ids(text))

    def head(self, text: str, n: int) -> str:
        return self.tok.decode(self._ids(text)[:max(0, n)])

    def tail(self, text: str, n: int) -> str:
        ids = self._ids(text)
        return self.tok.decode(ids[len(ids) - n:]) if n > 0 else ""


# ----------------------------------------------------------------------------- meta-prompt
def feedback_text(ex: ReflectionExample) -> str:
    if ex.extracted is None:
        head = ("No final answer was found in the response (the final answer must be inside \\boxed{}). "
                f"The correct answer is '{ex.answer}'.")
    elif ex.correct:
        head = f"Your final answer is correct. The correct answer is '{ex.answer}'."
    else:
        head = f"Your final answer '{ex.extracted}' is incorrect. The correct answer is '{ex.answer}'."
    reason = f"\nVerifier: {ex.reason}" if ex.reason else ""
    return f"{head}{reason}\nReward (answer_score) = {ex.score:.2f}"


def render_example(i: int, ex: ReflectionExample, output: str) -> str:
    return (f"# Example {i}\n## Inputs\n{ex.inputs}\n\n## Generated Outputs\n{output}\n\n"
            f"## Feedback\n{feedback_text(ex)}\n")


def cut_middle(text: str, keep_tokens: int, counter: TokenCounter) -> str:
    """Head and tail halves of `keep_tokens` around a marker; unchanged when it already fits."""
    if counter.count(text) <= keep_tokens:
        return text
    half = max(0, keep_tokens // 2)
    return counter.head(text, half) + TRUNCATION_MARKER + counter.tail(text, half)


def build_meta_prompt(template: str, examples: Sequence[ReflectionExample], budget_tokens: int,
                      counter: TokenCounter | None = None) -> tuple[str, int]:
    """The reflection prompt and the number of examples kept, fitted into `budget_tokens`."""
    counter = counter or ApproxTokens()
    outputs = [ex.output if ex.extracted is not None else cut_middle(ex.output, 2 * FORMAT_ERROR_KEEP_TOKENS, counter)
               for ex in examples]

    def assemble(n: int, outs: Sequence[str]) -> str:
        body = "\n".join(render_example(i + 1, examples[i], outs[i]) for i in range(n))
        return META_PROMPT_HEAD + template.strip() + META_PROMPT_MIDDLE + body + META_PROMPT_TAIL

    n = len(examples)
    prompt = assemble(n, outputs)
    if counter.count(prompt) <= budget_tokens:
        return prompt, n
    while n > 0:
        fixed = counter.count(assemble(n, [""] * n))
        share = (budget_tokens - fixed) // n - counter.count(TRUNCATION_MARKER) - 2
        if share > 0:
            cut = [cut_middle(o, share, counter) for o in outputs[:n]]
            prompt = assemble(n, cut)
            if counter.count(prompt) <= budget_tokens:
                return prompt, n
        n -= 1
    return assemble(0, []), 0


# ----------------------------------------------------------------------------- parsing
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```")
_LANG_TAG = re.compile(r"^[A-Za-z0-9_+.-]{1,24}[ \t]*\n")


def strip_reasoning(text: str) -> str:
    """Remove <think>...</think> blocks and anything before a stray closing </think>."""
    text = _THINK.sub("", text)
    low = text.lower()
    if "</think>" in low:
        text = text[low.rfind("</think>") + len("</think>"):]
    return text


def _clean_block(block: str) -> str:
    if not block.startswith("\n"):
        block = _LANG_TAG.sub("", block, count=1)
    return block.strip()


def parse_template(text: str, truncated: bool = False, max_chars: int = 4000) -> tuple[str | None, str]:
    """(template, "") when a usable fenced block is found, else (None, why)."""
    body = strip_reasoning(text or "")
    if not body.strip():
        return None, "empty answer"
    marks = [m.start() for m in _FENCE.finditer(body)]
    if not marks:
        return None, "no fenced block"
    blocks = [_clean_block(body[marks[i] + 3:marks[i + 1]]) for i in range(0, len(marks) - 1, 2)]
    if len(marks) % 2 == 1 and not truncated:
        blocks.append(_clean_block(body[marks[-1] + 3:]))
    blocks = [b for b in blocks if b]
    if not blocks:
        return None, "answer cut off by the token limit" if truncated and len(marks) % 2 else "empty fenced block"
    template = blocks[-1]
    if len(template) > max_chars:
        return None, f"template longer than {max_chars} characters"
    return template, ""


def completion_text(c: Completion) -> str:
    """The message content; when it is null, the reasoning channel (the part after </think> if present)."""
    if c.text is not None and c.text.strip():
        return c.text
    reasoning = c.reasoning or ""
    low = reasoning.lower()
    if "</think>" in low:
        return reasoning[low.rfind("</think>") + len("</think>"):]
    return reasoning


# ----------------------------------------------------------------------------- the proposer
class Reflector:
    """Proposes one child template per request through `complete(prompt) -> Completion`.

    `complete` may raise `CompletionUnavailable` (endpoint down: status "unavailable") or `CompletionFailed`
    (status "failed"); any other exception is also reported as "failed". Unparsable answers are "unusable".
    """

    def __init__(self, complete: Callable[[str], Completion], context_tokens: int, max_tokens: int,
                 counter: TokenCounter | None = None, max_template_chars: int = 4000, concurrency: int = 16):
        self.complete = complete
        self.budget_tokens = context_tokens - max_tokens - PROMPT_MARGIN_TOKENS
        if self.budget_tokens <= 0:
            raise ValueError(f"reflection.context_tokens ({context_tokens}) must exceed reflection.max_tokens "
                             f"({max_tokens}) by more than {PROMPT_MARGIN_TOKENS}")
        self.counter = counter or ApproxTokens()
        self.max_template_chars = max_template_chars
        self.concurrency = concurrency

    def propose_one(self, request: ReflectionRequest) -> Proposal:
        budget = self.budget_tokens
        for attempt in (0, 1):
            prompt, kept = build_meta_prompt(request.template, request.examples, budget, self.counter)
            if kept == 0 and request.examples:
                return Proposal("unusable", detail="no example fits the reflection context")
            try:
                completion = self.complete(prompt)
                break
            except PromptTooLong as e:
                # the endpoint takes fewer tokens than the config promised (a limit mismatch), or it reports no
                # count, or the refit did not help: a configuration error
                if attempt or not (e.prompt_tokens and e.limit and self.budget_tokens <= e.limit < e.prompt_tokens):
                    raise
                # the endpoint has the room we were configured for and our count was an estimate that came out
                # low: refit to the endpoint's own count, with 5% to spare
                budget = int(self.counter.count(prompt) * e.limit / e.prompt_tokens * 0.95)
                log.info("reflection prompt of %d tokens over the endpoint's %d: refitting to %d estimated tokens",
                         e.prompt_tokens, e.limit, budget)
            except RequestRefused:
                raise  # a configuration error: the job fails with it
            except CompletionUnavailable as e:
                return Proposal("unavailable", detail=str(e))
            except Exception as e:  # noqa: BLE001 - a failed reflection never stops the search
                return Proposal("failed", detail=f"{type(e).__name__}: {e}")
        text = completion_text(completion)
        template, why = parse_template(text, truncated=completion.finish_reason == "length",
                                       max_chars=self.max_template_chars)
        if template is None:
            return Proposal("unusable", detail=why, raw=text[:2000])
        return Proposal("ok", template=template, raw=text[:2000])

    def propose(self, requests: Sequence[ReflectionRequest]) -> list[Proposal]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(requests)))) as pool:
            return list(pool.map(self.propose_one, requests))
