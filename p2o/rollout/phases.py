"""Generation phases across ranks: rank 0's scheduler drives an engine on every rank (vLLM colocated).

vLLM under `external_launcher` is built by every rank of the job together (its model-parallel init and memory
profiling are collectives over the default group), so every rank holds an engine, and they generate together
(as TRL's colocate mode and verl's hybrid engine do): the engines form `world // tp` replicas of `tp`
consecutive ranks (vLLM's own TP layout), and every rank of one replica must be handed identical requests.
Rank 0 keeps the scheduler and the OpenAI gateway; a *generation phase* is a stretch of the training loop in
which every rank serves rank 0's engine calls:

    every rank                 rank 0 (main thread)                  rank 0 (scheduler thread, in a phase)
    enters the phase           scheduler.resume() ... waits          CollectiveEngine.generate(requests):
    follow(engine, group):                                             expand -> split by replica -> scatter
      wake_up                                                          own share -> engine.generate_sequences
      loop: receive, generate                                          gather the replicas' results -> regroup
      its replica's share,     scheduler.pause(); end_phase() ->
      send results             ("end") -> followers sleep and return

The phases of the loop: each step's rollouts, the held-out evaluation, and the GEPA round while rank 0 waits
for it (the GEPA service's candidate evaluations arrive through the gateway). Messages go over a gloo group of
their own, so they never interleave with the trainer's collectives; seeds are fixed on rank 0 before the split
(`batching.expand`), so the results do not depend on how many replicas share the work. Weight updates need no
message: every rank iterates the trainer's export stream anyway and loads it into its own engine.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from p2o.rollout.batching import Sequence, check_prompt, expand, regroup
from p2o.rollout.engine import EngineAsleep, Generation, GenerationRequest

log = logging.getLogger(__name__)

_GENERATE, _END = "generate", "end"
PHASE_TIMEOUT = timedelta(days=1)
"""Default timeout of the phase messages' gloo group (a phase lasts as long as the GEPA round in it); the trainer
passes `parallel.control_timeout_min`."""


@dataclass
class RankFailure:
    """A rank's exception during a collective engine call, sent to rank 0 instead of results."""

    rank: int
    error: str


class PhaseGroup:
    """This rank's place among the engines (replica = `tp` consecutive ranks) and the gloo group of the phase
    messages. Collective to construct (every rank, after the engines are built)."""

    def __init__(self, tp: int, timeout: timedelta = PHASE_TIMEOUT):
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        if tp < 1 or self.world % tp:
            raise ValueError(f"rollout.vllm_tp: got {tp}; expected a divisor of the number of ranks ({self.world})")
        self.tp = tp
        self.replicas = self.world // tp
        self.replica = self.rank // tp
        self.is_leader = self.rank % tp == 0
        # followers wait in a phase as long as rank 0 waits for its GEPA round: far beyond the default 30 min
        self.group = dist.new_group(backend="gloo", timeout=timeout)

    def split(self, seqs: list[Sequence]) -> list[list[Sequence]]:
        """Contiguous, nearly equal shares, one per replica (a request's samples stay together where possible)."""
        base, extra = divmod(len(seqs), self.replicas)
        shares, start = [], 0
        for r in range(self.replicas):
            end = start + base + (1 if r < extra else 0)
            shares.append(seqs[start:end])
            start = end
        return shares

    def scatter(self, messages: list[Any] | None) -> Any:
        """Rank 0 sends `messages[r]` to rank r; every rank returns its own."""
        box: list[Any] = [None]
        dist.scatter_object_list(box, messages if self.rank == 0 else None, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (None elsewhere)."""
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out


def _serve_share(engine: Any, group: PhaseGroup, share: list[Sequence]) -> Any:
    """Generate this replica's share; the replica's leader returns the results, the others None (or a failure)."""
    try:
        results = engine.generate_sequences(share)
    except Exception as e:  # reported to rank 0, which raises it for the scheduler
        log.exception("rank %d: generating %d sequences failed", group.rank, len(share))
        return RankFailure(group.rank, f"{type(e).__name__}: {e}")
    return results if group.is_leader else None


def follow(engine: Any, group: PhaseGroup) -> int:
    """A follower's side of one generation phase: wake the engine, serve rank 0's calls until it ends the phase,
    put the engine back to sleep. Returns the number of calls served."""
    if engine.is_sleeping:
        engine.wake_up()
    calls = 0
    try:
        while True:
            kind, share = group.scatter(None)
            if kind == _END:
                return calls
            group.gather(_serve_share(engine, group, share))
            calls += 1
    finally:
        engine.sleep()


class CollectiveEngine:
    """Rank 0's `RolloutEngine` over the engines of every rank (the scheduler and gateway see one engine).

    Only valid inside generation phases: `generate` is a collective with the followers in `follow`, and
    `end_phase` releases them. `load_weights`, `sleep` and `wake_up` act on rank 0's own engine (the others load
    their stream themselves and sleep/wake with the phase)."""

    def __init__(self, engine: Any, group: PhaseGroup, seed: int = 0):
        if group.rank != 0:
            raise ValueError("CollectiveEngine belongs to rank 0; other ranks call follow()")
        self.engine = engine
        self.group = group
        self.tokenizer = engine.tokenizer
        self._rng = random.Random(seed)

    @property
    def policy_version(self) -> int:
        return self.engine.policy_version

    @property
    def is_sleeping(self) -> bool:
        return self.engine.is_sleeping

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def load_weights(self, bucket_stream: Any, version: int) -> None:
        self.engine.load_weights(bucket_stream, version)

    def generate(self, requests: list[GenerationRequest]) -> list[list[Generation]]:
        """Every replica generates its share of the requests' sequences; rank 0 returns them all, in order.
        Checks that can fail are made before anything is sent, so a replica never waits on a rank that failed."""
        if self.engine.is_sleeping:
            raise EngineAsleep("CollectiveEngine.generate while asleep; call wake_up() first")
        for req in requests:
            check_prompt(req, self.engine.max_prompt_tokens, self.engine.vocab_size)
        shares = self.group.split(expand(requests, self._rng))
        self.group.scatter([(_GENERATE, shares[r // self.group.tp]) for r in range(self.group.world)])
        gathered = self.group.gather(_serve_share(self.engine, self.group, shares[0]))
        assert gathered is not None
        failures = [g for g in gathered if isinstance(g, RankFailure)]
        if failures:
            raise RuntimeError("; ".join(f"rank {f.rank}: {f.error}" for f in failures))
        results: dict[tuple[int, int], Generation] = {}
        for g in gathered:
            if g is not None:
                results.update(g)
        return regroup(requests, results)

    def end_phase(self) -> None:
        """Release the followers (rank 0, after the scheduler has paused: no call in flight)."""
        self.group.scatter([(_END, None)] * self.group.world)

