"""The evaluation loop: benchmark problems -> prompts -> generations -> verdicts -> per-problem results.

Protocol (P2O paper §4.1, following the Qwen2.5-Math evaluation suite): a benchmark with fewer than
`sampled_below` (100) problems in its full release is scored as the mean over `samples` (16) responses at
temperature `temperature` (0.6); larger ones with one greedy response. Prompts use the training convention
(`p2o.prompts.messages` + `encode`, the same user template and thinking mode), so a checkpoint is scored on
the prompt it was trained with. Verdicts come from the training verifier.

The harness needs two small things, both given by the caller:
- an engine with `generate(list[GenerationRequest]) -> list[list[Generation]]` (`p2o.rollout`'s protocol);
- a scorer with `score_many([(response, gold answer), ...]) -> list[verdict]`, each verdict having
  `.correct` and `.extracted` (`p2o.reward.Verifier`, the training reward).
"""
from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from p2o.data.problem import Problem
from p2o.eval.benchmarks import SAMPLED_BELOW, BenchmarkSpec
from p2o.eval.metrics import benchmark_scores
from p2o.prompts import DEFAULT_USER_TEMPLATE, encode, messages
from p2o.rollout.engine import Generation, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the harness needs from a rollout engine (`p2o.rollout.engine.RolloutEngine` satisfies it)."""

    def generate(self, requests: list[GenerationRequest]) -> list[list[Generation]]: ...


class Scorer(Protocol):
    """What the harness needs from a verifier: verdicts with `.correct` / `.extracted`, in pair order."""

    def score_many(self, pairs: list[tuple[str, str]]) -> list[Any]: ...


@dataclass
class EvalSettings:
    """How benchmarks are decoded and scored (defaults: the paper's protocol)."""

    samples: int = 16
    """Responses per problem for sampled benchmarks (avg@16 in the paper)."""
    temperature: float = 0.6
    """Sampling temperature for sampled benchmarks; greedy benchmarks always use 0."""
    top_p: float = 1.0
    """Nucleus threshold for sampled benchmarks."""
    top_k: int = 0
    """Top-k for sampled benchmarks (0: off)."""
    max_new_tokens: int = 12288
    """Maximum response length in tokens (the paper trains with 12k responses)."""
    sampled_below: int = SAMPLED_BELOW
    """Benchmarks whose full release has fewer problems than this are sampled; the rest are greedy."""
    pass_ks: tuple[int, ...] = (1, 4, 8, 16)
    """pass@k values reported for sampled benchmarks (k <= samples)."""
    seed: int = 0
    """Base sampling seed; each problem gets a seed derived from (seed, benchmark, problem id)."""
    batch_size: int = 32
    """Requests handed to the engine per call."""
    thinking: str = "off"
    """Chat-template thinking convention, as in training (`model.thinking`)."""
    user_template: str = DEFAULT_USER_TEMPLATE
    """User-turn text with '{question}' (`prompt.user_template`)."""
    system: str = ""
    """Optional system message (`prompt.system`)."""
    template: str = ""
    """Optional prompt template z inserted as T(x, z) (empty: the plain prompt, as the paper evaluates)."""
    keep_responses: bool = True
    """Store response texts in the per-problem results."""

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples: got {self.samples}; expected an integer >= 1")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: got {self.max_new_tokens}; expected an integer >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: got {self.batch_size}; expected an integer >= 1")

    def sampling(self, protocol: str, seed: int) -> SamplingParams:
        """Sampling parameters of one problem under `protocol` ('sampled' | 'greedy')."""
        if protocol == "greedy":
            return SamplingParams(n=1, temperature=0.0, max_new_tokens=self.max_new_tokens, seed=seed)
        return SamplingParams(n=self.samples, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, seed=seed)


@dataclass
class ProblemResult:
    """One problem's outcome: `correct` of `n` responses were judged right."""

    benchmark: str
    id: str
    answer: str
    n: int
    correct: int
    score: float
    """correct / n (avg@n for this problem)."""
    verdicts: list[bool]
    extracted: list[str | None]
    response_tokens: list[int]
    finish_reasons: list[str]
    responses: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ProblemResult:
        return ProblemResult(**{k: d[k] for k in ProblemResult.__dataclass_fields__ if k in d})


@dataclass
class BenchmarkResult:
    """A benchmark's per-problem results and summary scores (fractions in [0, 1])."""

    name: str
    title: str
    protocol: str
    samples: int
    temperature: float
    problems: list[ProblemResult]
    scores: dict[str, float]
    """'avg' (the paper's number: avg@n, or greedy accuracy) and 'pass@k' for k <= n."""
    seconds: float = 0.0
    mean_response_tokens: float = 0.0


def problem_seed(seed: int, benchmark: str, problem_id: str) -> int:
    """A stable per-problem sampling seed (independent of problem order and of Python's hash seed)."""
    return zlib.crc32(f"{seed}:{benchmark}:{problem_id}".encode()) & 0x7FFFFFFF


def build_prompts(tokenizer: Any, problems: Sequence[Problem], settings: EvalSettings) -> list[list[int]]:
    """Prompt token ids of each problem, built exactly as training builds them."""
    return [encode(tokenizer, messages(p.question, settings.template or None, settings.user_template,
                                       settings.system), settings.thinking) for p in problems]


def run_benchmark(engine: Engine, tokenizer: Any, scorer: Scorer, spec: BenchmarkSpec,
                  problems: Sequence[Problem], settings: EvalSettings) -> BenchmarkResult:
    """Generate, verify and score one benchmark under the paper's protocol."""
    protocol = spec.protocol(settings.sampled_below)
    prompts = build_prompts(tokenizer, problems, settings)
    start = time.perf_counter()
    results: list[ProblemResult] = []
    for lo in range(0, len(problems), settings.batch_size):
        chunk = list(problems[lo:lo + settings.batch_size])
        requests = [GenerationRequest(prompt_ids=prompts[lo + i],
                                      params=settings.sampling(protocol, problem_seed(settings.seed, spec.name, p.id)),
                                      request_id=f"{spec.name}/{p.id}") for i, p in enumerate(chunk)]
        generations = engine.generate(requests)
        if len(generations) != len(requests):
            raise RuntimeError(f"engine returned {len(generations)} results for {len(requests)} requests")
        verdicts = scorer.score_many([(g.text, p.answer) for p, gens in zip(chunk, generations, strict=True) for g in gens])
        pos = 0
        for p, gens in zip(chunk, generations, strict=True):
            vs = verdicts[pos:pos + len(gens)]
            pos += len(gens)
            ok = [bool(v.correct) for v in vs]
            results.append(ProblemResult(
                benchmark=spec.name, id=p.id, answer=p.answer, n=len(gens), correct=sum(ok),
                score=sum(ok) / len(gens), verdicts=ok, extracted=[v.extracted for v in vs],
                response_tokens=[len(g.response_ids) for g in gens], finish_reasons=[g.finish_reason for g in gens],
                responses=[g.text for g in gens] if settings.keep_responses else []))
        log.info("%s: %d/%d problems", spec.name, len(results), len(problems))
    seconds = time.perf_counter() - start
    return summarise(spec, protocol, results, settings, seconds)


def summarise(spec: BenchmarkSpec, protocol: str, results: list[ProblemResult], settings: EvalSettings,
              seconds: float = 0.0) -> BenchmarkResult:
    """Scores of a benchmark from its per-problem results."""
    n = settings.samples if protocol == "sampled" else 1
    ks = settings.pass_ks if protocol == "sampled" else (1,)
    scores = benchmark_scores([(r.n, r.correct) for r in results], ks)
    tokens = [t for r in results for t in r.response_tokens]
    return BenchmarkResult(name=spec.name, title=spec.title, protocol=protocol, samples=n,
                           temperature=settings.temperature if protocol == "sampled" else 0.0, problems=results,
                           scores=scores, seconds=seconds,
                           mean_response_tokens=sum(tokens) / len(tokens) if tokens else 0.0)
