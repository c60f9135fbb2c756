"""The rollout side of training: generation phases, rewards, weight sync into the engines, plain-prompt evaluation.

Rank 0 holds the scheduler (behind the policy's OpenAI-compatible gateway, which the GEPA service also uses to
score candidates with the current policy) and the verifier. `rollout.engine=hf` is one engine on rank 0;
`rollout.engine=vllm` is an engine on *every* rank, in replicas of `rollout.vllm_tp` ranks, which rank 0's scheduler
drives through `p2o.rollout.phases`. Every method that generates (`rollouts`, `evaluate_plain`, `serve_while`) is
then a *generation phase* that every rank calls: rank 0 serves the scheduler, the others `follow` until rank 0 ends
the phase. With one engine (hf, or a single rank) the other ranks return at once (and wait for rank 0's results on
the control group). Every rank loads the exported weights into its own engine (`sync_weights`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from p2o.config import RunConfig
from p2o.data.problem import Problem
from p2o.train.distributed_control import DistributedControl
from p2o.train.policy import PolicyBackend
from p2o.train.rows import TrainRow, plan_requests, to_rows

log = logging.getLogger(__name__)

T = TypeVar("T")


class RolloutService(Protocol):
    def rollouts(self, problems: list[Problem], assignment: dict[str, list[str]], step: int) -> list[TrainRow] | None:
        """A generation phase (every rank): this step's rollouts, templated per `assignment` (problem id -> K
        templates). Rank 0 returns the rows, the others None."""

    def serve_while(self, wait: Callable[[], T]) -> T | None:
        """A generation phase (every rank) with no requests of its own: rank 0 runs `wait()` while the engines serve
        what arrives through the gateway (GEPA's candidate evaluations) and returns its result; the others None."""

    def verify(self, pairs: list[tuple[str, str]]) -> list[Any]:
        """Verdicts (`.correct`, `.reason`) of (response text, reference answer) pairs (rank 0)."""

    def sync_weights(self, version: int) -> None:
        """Collective: the policy's current weights into every engine, as policy `version`."""

    def evaluate_heldout(self, epoch: int | None = None) -> dict[str, float]:
        """Held-out accuracy with the plain prompt (a generation phase; {} without held-out problems)."""

    def evaluate_plain(self, problems: list[Problem], name: str, epoch: int | None = None,
                       samples: int = 4) -> dict[str, float]:
        """Accuracy on `problems` with the plain prompt x (a generation phase; see `EngineRolloutService`)."""


class EngineRolloutService:
    """`RolloutService` over the engines: rank 0 passes the gateway (with its scheduler) and the verifier; a rank
    without an engine of its own (hf engine, ranks > 0) passes engine=None. `phases` is the
    `p2o.rollout.phases.PhaseGroup` when every rank holds an engine and there are several ranks, else None."""

    def __init__(self, cfg: RunConfig, run_dir: Path, control: DistributedControl, policy: PolicyBackend,
                 tokenizer: Any, eval_problems: list[Problem], engine: Any = None, phases: Any = None,
                 gateway: Any = None, verifier: Any = None):
        self.cfg, self.run_dir, self.control, self.policy, self.tokenizer = cfg, run_dir, control, policy, tokenizer
        self.eval_problems = eval_problems
        self.engine, self.phases, self.gateway, self.verifier = engine, phases, gateway, verifier

    @property
    def scheduler(self):
        return self.gateway.scheduler

    # ------------------------------------------------------------------ generation phases
    def _follow(self) -> None:
        """A non-zero rank's side of a generation phase: its engine serves rank 0's calls until the phase ends
        (returns at once when rank 0 holds the only engine)."""
        if self.phases is not None:
            from p2o.rollout.phases import follow

            follow(self.engine, self.phases)

    @contextmanager
    def _phase(self) -> Iterator[None]:
        """Rank 0's side of a generation phase: the body resumes and pauses the scheduler; at the end the
        followers are released (also when the body raises, so no rank waits forever)."""
        try:
            yield
        finally:
            if self.phases is not None:
                self.scheduler.pause()
                self.engine.end_phase()

    def _collect(self, futures: list, desc: str) -> list:
        """Wait for generation futures with a progress bar (requests done / total, with ETA)."""
        from concurrent.futures import wait

        from p2o.telemetry.progress import progress

        with progress(desc, total=len(futures), enabled=self.cfg.logging.progress, unit="req") as bar:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=1.0)
                bar.update(len(done))
        return [f.result() for f in futures]

    def rollouts(self, problems: list[Problem], assignment: dict[str, list[str]], step: int) -> list[TrainRow] | None:
        """Wake the engine, serve this step's rollouts (batched with queued requests), sleep."""
        if not self.control.is_rank0:
            self._follow()
            return None
        with self._phase():
            planned = plan_requests(self.cfg, self.tokenizer, problems, assignment, step)
            futures = self.scheduler.submit([p.request for p in planned], priority="training")
            self.scheduler.resume()
            generations = self._collect(futures, f"step {step} generate")
            self.scheduler.pause()
        return to_rows(planned, generations)

    def serve_while(self, wait: Callable[[], T]) -> T | None:
        if not self.control.is_rank0:
            self._follow()
            return None
        with self._phase():
            self.scheduler.resume()
            result = wait()
            self.scheduler.pause()
        return result

    # ------------------------------------------------------------------ rewards, weights
    def verify(self, pairs: list[tuple[str, str]]) -> list[Any]:
        return self.verifier.score_many(pairs)

    def sync_weights(self, version: int) -> None:
        """Every rank streams its weights; every rank that holds an engine loads them at `version` (rank 0 through
        the scheduler, between batches).

        With `rollout.share_weights` and the HF engine, the stream hands out views of the policy's parameters
        where layouts allow and the engine adopts them instead of keeping its own copy; it refuses to generate
        if the policy changes them before the next sync (`p2o.rollout.hf_engine`, docs/rollout.md)."""
        stream = self.policy.export_weights(self.cfg.rollout.weight_bucket_bytes)
        if self.cfg.rollout.share_weights and self.cfg.rollout.engine == "hf" and hasattr(stream, "views"):
            stream.views = True
        if self.control.is_rank0:
            self.scheduler.update_weights(stream, version)
        elif self.engine is not None:
            self.engine.load_weights(stream, version)
        else:
            for _ in stream:
                pass

    # ------------------------------------------------------------------ evaluation
    def evaluate_heldout(self, epoch: int | None = None) -> dict[str, float]:
        """Held-out accuracy without templates: greedy, and avg@4 at the rollout temperature (`evaluate_plain`)."""
        return self.evaluate_plain(self.eval_problems, "heldout", epoch) if self.eval_problems else {}

    def evaluate_plain(self, problems: list[Problem], name: str, epoch: int | None = None,
                       samples: int = 4) -> dict[str, float]:
        """Accuracy on `problems` with the plain prompt x (no template), served by the scheduler at evaluation
        priority: one greedy response and `samples` at the rollout temperature per problem. Every rank calls it
        with the same problems; rank 0 returns the metrics, the others {}.

        Returns `{name}_greedy` and `{name}_avg{samples}` (fractions correct) and `{name}_size` (problems); with
        an `epoch`, also writes the per-problem results to evals/{name}_epoch{epoch:03d}.jsonl, one
        {"id", "greedy": 0|1, "correct": correct samples, "n": samples} line per problem."""
        if not problems:
            return {}
        if not self.control.is_rank0:
            self._follow()
            return {}
        from p2o import prompts
        from p2o.rollout.engine import GenerationRequest, SamplingParams

        cfg = self.cfg
        ids = [prompts.encode(self.tokenizer, prompts.messages(p.question, None, cfg.prompt.user_template,
                                                               cfg.prompt.system), cfg.model.thinking)
               for p in problems]
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.rollout.max_new_tokens)
        sampled = SamplingParams(n=samples, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                 top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens,
                                 seed=cfg.rollout.seed)
        reqs = [GenerationRequest(i, greedy, f"{name}-g{j}") for j, i in enumerate(ids)]
        reqs += [GenerationRequest(i, sampled, f"{name}-s{j}") for j, i in enumerate(ids)]
        with self._phase():
            futures = self.scheduler.submit(reqs, priority="evaluation")
            self.scheduler.resume()
            gens = self._collect(futures, f"{name} eval")
            self.scheduler.pause()
        n = len(ids)
        pairs = [(gl[0].text, p.answer) for gl, p in zip(gens[:n], problems, strict=True)]
        pairs += [(g.text, p.answer) for gl, p in zip(gens[n:], problems, strict=True) for g in gl]
        verdicts = self.verify(pairs)
        per = [{"id": p.id, "greedy": int(verdicts[j].correct),
                "correct": sum(v.correct for v in verdicts[n + j * samples: n + (j + 1) * samples]), "n": samples}
               for j, p in enumerate(problems)]
        if epoch is not None:
            from p2o.jsonl import write_jsonl

            write_jsonl(self.run_dir / "evals" / f"{name}_epoch{epoch:03d}.jsonl", per)
        return {f"{name}_greedy": sum(r["greedy"] for r in per) / n,
                f"{name}_avg{samples}": sum(r["correct"] for r in per) / (samples * n), f"{name}_size": n}
