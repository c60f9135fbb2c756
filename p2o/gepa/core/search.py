"""The GEPA search loop over prompt templates, resumable at every evaluation wave.

    state = new_state(problems, cfg)                  # dev/feedback split, seeded
    Search(problems, cfg, evaluator, reflector, state, hooks=...).run()   # until a stopper fires

One iteration (W = `num_parents`, B = `minibatch_size`):

1. pick up to W distinct parents (`pool.select_parents`, mode `parent_selection`) and draw a minibatch of
   B feedback problems per parent, without replacement across the run (reshuffled when exhausted);
2. wave 1: every parent on its minibatch, one concurrent wave;
3. reflection: one child per parent (skipped when the parent already solves its whole minibatch and
   `skip_perfect_parent`); unusable / failed answers are counted and skipped;
4. wave 2: every usable child on its parent's minibatch (children identical to a pool member are rejected
   without evaluation);
5. acceptance: child minibatch sum strictly greater than the parent's;
6. wave 3: accepted children on the whole dev set; they join the pool (fronts update implicitly).

Budget (one metric call = one evaluated (template, problem) pair): `budget_metric_calls`, or with
`budget: auto` the authors' per-round budget `metric_budget` = dspy's `auto_budget` for 72 candidates on
this round's dev set, 23 |dev| + 4140 (11040 at dev 300). Accounting:

- ``honest``: every evaluation is charged (seed dev evaluation, parents, children, dev evaluations). An
  iteration starts only when 2B per parent fits; the number of parents is capped to what fits. Dev
  evaluations of the last iteration's accepted children may overshoot; `metric_calls` is always exact.
- ``authors`` (the released code, for reproduction): nothing is charged in iterations 0 and 1 nor for the
  seed; later iterations charge B per parent + |dev| per accepted child (children's minibatch evaluations
  are free); when the next iteration's estimate B|P| + |dev||P| exceeds the remainder, one last iteration
  runs if anything remains.

Other stoppers: `max_wall_s` (summed over resumes), `no_improvement_iters`, and `hooks.should_stop()`
(cancellation). Every phase ends with `hooks.checkpoint(state)`; the state holds the random generator's
state, the minibatch order and the partial iteration, so a resumed search re-derives exactly the same
choices and never re-charges a completed wave. When the evaluator reports pairs as unavailable, or every
reflection call finds the reflection endpoint down, the search calls `hooks.on_pause(reason)`, sleeps
`pause_poll_s`, retries only the missing work, and calls `hooks.on_resume()` once it goes through.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from p2o.config import Budget, GEPAConfig
from p2o.data.problem import Problem
from p2o.gepa.core.evaluate import EvalItem, EvalOutcome, Evaluator
from p2o.gepa.core.pool import Pool, select_parents
from p2o.gepa.core.reflect import Proposal, ReflectionExample, ReflectionRequest, Reflector
from p2o.prompts import DEFAULT_USER_TEMPLATE, user_text

log = logging.getLogger(__name__)

AUTHORS_FREE_ITERATIONS = 2
AUTO_BUDGET_CANDIDATES = 72
"""The authors' GEPA setting `auto="heavy_4"`: 72 candidates (4 x dspy's heavy = 18)."""


# ----------------------------------------------------------------------------- budget
def auto_budget(num_candidates: int, valset_size: int, num_preds: int = 1, minibatch_size: int = 35,
                full_eval_steps: int = 5) -> int:
    """dspy's `GEPA.auto_budget` (which the authors' trainer copies), in metric calls: one full evaluation of the
    seed, 5 per candidate, `minibatch_size` per trial, and ⌊(N+1)/full_eval_steps⌋ + 1 (+1 when N <
    full_eval_steps) periodic full evaluations, with N = int(max(4 num_preds log2(C), 1.5 C)) trials.
    For C = 72: N = 108 and the budget is 23 |dev| + 4140."""
    trials = int(max(2 * (num_preds * 2) * math.log2(num_candidates), 1.5 * num_candidates))
    total = valset_size + 5 * num_candidates + trials * minibatch_size
    if trials == 0:
        return total
    periodic = (trials + 1) // full_eval_steps + 1 + (1 if full_eval_steps > trials else 0)
    return total + periodic * valset_size


def dev_count(n_problems: int, dev_size: int) -> int:
    """Size of the dev split of a hard set of `n_problems` (`split_hard_set`)."""
    return n_problems // 2 if n_problems < 1.5 * dev_size else dev_size


def metric_budget(cfg: GEPAConfig, n_dev: int) -> int:
    """The round's budget in metric calls: `budget_metric_calls`, or `auto_budget` for the round's dev size."""
    if cfg.budget == Budget.AUTO:
        return auto_budget(AUTO_BUDGET_CANDIDATES, n_dev)
    return cfg.budget_metric_calls


@dataclass(frozen=True)
class RoundBounds:
    """What one GEPA round may cost, from the budget arithmetic alone (before it runs)."""

    budget: int
    """Charged metric calls."""
    max_metric_calls: int
    """Upper bound on evaluated (template, problem) pairs: every call, charged or not."""
    max_reflection_calls: int
    """Upper bound on reflection calls (one per parent slot that is not skipped)."""


def round_bounds(cfg: GEPAConfig, n_dev: int) -> RoundBounds:
    """Upper bounds for a round with `n_dev` dev problems (B = minibatch_size, W = num_parents, S = seeds).

    honest: every call is charged; the last iteration's accepted children overshoot by at most W |dev|; each
    reflection follows a charged parent minibatch (B calls) after the seeds' S |dev|.
    authors: the seeds and iterations 0 and 1 are free (at most 2 (2BW + W |dev|)), later iterations charge B per
    parent and |dev| per accepted child but really cost up to twice that (the children's minibatches), and the
    last one may charge BW + W |dev| past the budget: S |dev| + 2 budget + 6BW + 4W |dev|; reflections <=
    2W + (budget + BW + W |dev|) / B."""
    budget = metric_budget(cfg, n_dev)
    b, w = cfg.minibatch_size, cfg.num_parents
    seeds = 1 + len({z.strip() for z in cfg.seed_templates if z.strip()} - {""})
    if cfg.accounting == "honest":
        return RoundBounds(budget, budget + w * n_dev, max(0, budget - seeds * n_dev) // b)
    charged_max = budget + b * w + w * n_dev
    free = AUTHORS_FREE_ITERATIONS * (2 * b * w + w * n_dev)
    return RoundBounds(budget, seeds * n_dev + free + 2 * charged_max,
                       AUTHORS_FREE_ITERATIONS * w + charged_max // b)


# ----------------------------------------------------------------------------- records
@dataclass
class ProposalRecord:
    """One parent slot of one iteration. status: accepted | rejected | duplicate | unusable |
    reflection_failed | parent_perfect."""

    iteration: int
    parent: int
    minibatch: list[str]
    parent_scores: list[float]
    status: str
    reason: str = ""
    child_template: str = ""
    child_scores: list[float] = field(default_factory=list)
    child: int | None = None
    dev_mean: float | None = None


@dataclass
class IterationStats:
    """One finished iteration: parents drawn, children accepted, metric calls made in it, seconds spent in it."""

    iteration: int
    parents: int
    accepted: int
    metric_calls: int
    wall_s: float


@dataclass
class Pending:
    """The iteration in progress; each phase's output is filled in as it completes."""

    parents: list[int]
    minibatches: list[list[int]]
    charge: bool = True
    last: bool = False
    wall_s_at_start: float = 0.0
    calls_at_start: int = 0
    parent_outcomes: list[list[EvalOutcome]] | None = None
    proposals: list[Proposal] | None = None
    child_outcomes: list[list[EvalOutcome] | None] | None = None

    @staticmethod
    def from_dict(d: dict) -> Pending:
        d = dict(d)
        if d.get("parent_outcomes") is not None:
            d["parent_outcomes"] = [_outcomes(g) for g in d["parent_outcomes"]]
        if d.get("proposals") is not None:
            d["proposals"] = [Proposal(**g) for g in d["proposals"]]
        if d.get("child_outcomes") is not None:
            d["child_outcomes"] = [None if g is None else _outcomes(g) for g in d["child_outcomes"]]
        return Pending(**d)


def _outcomes(group: list[dict]) -> list[EvalOutcome]:
    return [EvalOutcome(**o) for o in group]


@dataclass
class SearchState:
    dev_ids: list[str]
    feedback_ids: list[str]
    rng_state: Any
    pool: Pool = field(default_factory=Pool)
    iteration: int = 0
    metric_calls: int = 0
    """Every (template, problem) evaluation made, whatever the accounting mode."""
    charged: int = 0
    """Metric calls charged to the budget under the accounting mode."""
    feedback_order: list[int] = field(default_factory=list)
    feedback_cursor: int = 0
    log: list[ProposalRecord] = field(default_factory=list)
    pending: Pending | None = None
    iters_since_accept: int = 0
    wall_s: float = 0.0
    stop_reason: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    iteration_stats: list[IterationStats] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pool"] = self.pool.to_dict()
        d["rng_state"] = _rng_to_json(self.rng_state)
        return d

    @staticmethod
    def from_dict(d: dict) -> SearchState:
        d = dict(d)
        d["pool"] = Pool.from_dict(d["pool"])
        d["rng_state"] = _rng_from_json(d["rng_state"])
        d["log"] = [ProposalRecord(**r) for r in d["log"]]
        d["pending"] = Pending.from_dict(d["pending"]) if d.get("pending") else None
        d["iteration_stats"] = [IterationStats(**s) for s in d.get("iteration_stats", [])]
        return SearchState(**d)


def _rng_to_json(state: Any) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(data: Any) -> tuple:
    if isinstance(data, tuple):
        return data
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


def split_hard_set(ids: Sequence[str], dev_size: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """(dev, feedback): dev_size random ids, or a random 50/50 split when len(ids) < 1.5 x dev_size."""
    if len(ids) < 2:
        raise ValueError(f"the hard set has {len(ids)} problem(s); GEPA needs at least 2 (a dev and a feedback one)")
    order = list(ids)
    rng.shuffle(order)
    n_dev = dev_count(len(order), dev_size)
    return order[:n_dev], order[n_dev:]


def new_state(problems: Sequence[Problem], cfg: GEPAConfig) -> SearchState:
    """The initial state: the seeded split; the seed template is evaluated by the first `Search.run`."""
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"problems: duplicate problem id {dup!r}; ids must be unique within a hard set")
    rng = random.Random(cfg.seed)
    dev, feedback = split_hard_set(ids, cfg.dev_size, rng)
    return SearchState(dev_ids=dev, feedback_ids=feedback, rng_state=rng.getstate())


# ----------------------------------------------------------------------------- hooks
class Cancelled(Exception):
    pass


@dataclass
class SearchHooks:
    checkpoint: Callable[[SearchState], None] = lambda state: None
    should_stop: Callable[[], str | None] = lambda: None
    """A non-empty return (e.g. "cancelled") stops the search at the next phase boundary or pause retry."""
    on_pause: Callable[[str], None] = lambda reason: None
    on_resume: Callable[[], None] = lambda: None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


# ----------------------------------------------------------------------------- the loop
class Search:
    def __init__(self, problems: Sequence[Problem], cfg: GEPAConfig, evaluator: Evaluator, reflector: Reflector,
                 state: SearchState, user_template: str = DEFAULT_USER_TEMPLATE,
                 hooks: SearchHooks | None = None):
        self.problems = {p.id: p for p in problems}
        self.cfg = cfg
        self.evaluator = evaluator
        self.reflector = reflector
        self.state = state
        self.user_template = user_template
        self.hooks = hooks or SearchHooks()
        self.budget = metric_budget(cfg, len(state.dev_ids))
        """This round's budget in metric calls (fixed, or auto from the dev size)."""
        self._mark = self.hooks.clock()
        missing = [pid for pid in state.dev_ids + state.feedback_ids if pid not in self.problems]
        if missing:
            raise ValueError(f"state refers to problem id {missing[0]!r}, which is not in the submitted problems")

    # -- plumbing
    def _checkpoint(self) -> None:
        now = self.hooks.clock()
        self.state.wall_s += now - self._mark
        self._mark = now
        self.hooks.checkpoint(self.state)

    def _count(self, key: str, n: int = 1) -> None:
        self.state.counters[key] = self.state.counters.get(key, 0) + n

    def _charge(self, n: int, charge_authors: bool) -> None:
        self.state.metric_calls += n
        if self.cfg.accounting == "honest" or charge_authors:
            self.state.charged += n

    def _check_cancel(self) -> None:
        reason = self.hooks.should_stop()
        if reason:
            raise Cancelled(reason)

    def _wave(self, items: list[EvalItem]) -> list[EvalOutcome]:
        """Evaluate all items; pause and retry the unavailable ones until every item is scored."""
        results: list[EvalOutcome | None] = [None] * len(items)
        todo = list(range(len(items)))
        paused = False
        while todo:
            outs = self.evaluator.evaluate([items[i] for i in todo]) if todo else []
            if len(outs) != len(todo):
                raise RuntimeError(f"evaluator returned {len(outs)} outcomes for {len(todo)} items")
            failed = []
            for i, o in zip(todo, outs, strict=True):
                if o.ok:
                    results[i] = o
                else:
                    failed.append((i, o))
            if not failed:
                break
            paused = True
            self.hooks.on_pause(f"task-model endpoint unavailable ({len(failed)} of {len(items)} requests): "
                                f"{failed[0][1].error}")
            self._count("task_model_pauses")
            self._check_cancel()
            self.hooks.sleep(self.cfg.pause_poll_s)
            self._check_cancel()
            todo = [i for i, _ in failed]
        if paused:
            self.hooks.on_resume()
        return [r for r in results if r is not None]

    def _items(self, template: str, problem_ids: Sequence[str]) -> list[EvalItem]:
        return [EvalItem(template, self.problems[pid]) for pid in problem_ids]

    # -- phases
    def _evaluate_seed(self) -> None:
        """The empty template and any `gepa.seed_templates`, scored on dev in one wave (iteration -1)."""
        seeds = [""]
        for z in self.cfg.seed_templates:
            if z.strip() and z.strip() not in seeds:
                seeds.append(z.strip())
        n = len(self.state.dev_ids)
        outs = self._wave([it for z in seeds for it in self._items(z, self.state.dev_ids)])
        self._charge(len(outs), charge_authors=False)
        for k, z in enumerate(seeds):
            self.state.pool.add(z, None, -1, [o.score for o in outs[k * n:(k + 1) * n]], self.state.metric_calls)
        self._checkpoint()

    def _draw_minibatch(self, rng: random.Random) -> list[int]:
        st = self.state
        b = min(self.cfg.minibatch_size, len(st.feedback_ids))
        out: list[int] = []
        while len(out) < b:
            if st.feedback_cursor >= len(st.feedback_order):
                st.feedback_order = list(range(len(st.feedback_ids)))
                rng.shuffle(st.feedback_order)
                st.feedback_cursor = 0
            i = st.feedback_order[st.feedback_cursor]
            st.feedback_cursor += 1
            if i not in out:
                out.append(i)
        return out

    def _stop_before_iteration(self) -> str | None:
        cfg, st = self.cfg, self.state
        if cfg.max_wall_s and st.wall_s >= cfg.max_wall_s:
            return "wall_time"
        if cfg.no_improvement_iters and st.iters_since_accept >= cfg.no_improvement_iters:
            return "no_improvement"
        if cfg.accounting == "honest" and self.budget - st.charged < 2 * self._b():
            return "budget"
        if (cfg.accounting == "authors" and st.iteration >= AUTHORS_FREE_ITERATIONS
                and self.budget - st.charged <= 0):
            return "budget"
        return None

    def _b(self) -> int:
        return min(self.cfg.minibatch_size, len(self.state.feedback_ids))

    def _start_iteration(self) -> Pending | None:
        cfg, st = self.cfg, self.state
        rng = random.Random()
        rng.setstate(st.rng_state)
        w = cfg.num_parents
        if cfg.accounting == "honest":
            w = min(w, (self.budget - st.charged) // (2 * self._b()))
        parents = select_parents(st.pool, w, cfg.parent_selection, rng)
        charge = cfg.accounting == "honest" or st.iteration >= AUTHORS_FREE_ITERATIONS
        last = False
        if cfg.accounting == "authors" and st.iteration >= AUTHORS_FREE_ITERATIONS:
            remaining = self.budget - st.charged
            last = remaining < self._b() * len(parents) + len(st.dev_ids) * len(parents)
        minibatches = [self._draw_minibatch(rng) for _ in parents]
        st.rng_state = rng.getstate()
        return Pending(parents=parents, minibatches=minibatches, charge=charge, last=last, wall_s_at_start=st.wall_s,
                       calls_at_start=st.metric_calls)

    def _evaluate_parents(self, p: Pending) -> None:
        st = self.state
        items = [item for parent, mb in zip(p.parents, p.minibatches, strict=True)
                 for item in self._items(st.pool.candidates[parent].template, [st.feedback_ids[i] for i in mb])]
        outs = self._wave(items)
        self._charge(len(outs), p.charge)
        p.parent_outcomes = _split(list(outs), [len(mb) for mb in p.minibatches])

    def _request(self, parent: int, mb: list[int], outcomes: list[EvalOutcome]) -> ReflectionRequest:
        examples = []
        for i, o in zip(mb, outcomes, strict=True):
            prob = self.problems[self.state.feedback_ids[i]]
            examples.append(ReflectionExample(
                inputs=user_text(prob.question, self.user_template), output=o.response, answer=prob.answer,
                correct=o.score >= 1.0, extracted=o.extracted, reason=o.reason, score=o.score))
        return ReflectionRequest(self.state.pool.candidates[parent].template, examples)

    def _propose(self, p: Pending) -> None:
        assert p.parent_outcomes is not None
        slots, requests = [], []
        proposals: list[Proposal | None] = [None] * len(p.parents)
        for s, (parent, mb, outs) in enumerate(zip(p.parents, p.minibatches, p.parent_outcomes, strict=True)):
            if self.cfg.skip_perfect_parent and all(o.score >= 1.0 for o in outs):
                proposals[s] = Proposal("parent_perfect", detail="parent solves its whole minibatch")
            else:
                slots.append(s)
                requests.append(self._request(parent, mb, outs))
        paused = False
        while True:
            got = self.reflector.propose(requests)
            if not got or any(g.status != "unavailable" for g in got):
                break
            paused = True
            self.hooks.on_pause(f"reflection endpoint unavailable: {got[0].detail}")
            self._count("reflection_pauses")
            self._check_cancel()
            self.hooks.sleep(self.cfg.pause_poll_s)
            self._check_cancel()
        if paused:
            self.hooks.on_resume()
        for s, g in zip(slots, got, strict=True):
            proposals[s] = g
        assert all(g is not None for g in proposals)
        p.proposals = [g for g in proposals if g is not None]

    def _evaluate_children(self, p: Pending) -> None:
        st = self.state
        assert p.proposals is not None
        items, sizes, slots = [], [], []
        for s, (prop, mb) in enumerate(zip(p.proposals, p.minibatches, strict=True)):
            if prop.status == "ok" and st.pool.index_of(prop.template) is None:
                ids = [st.feedback_ids[i] for i in mb]
                items += self._items(prop.template, ids)
                sizes.append(len(ids))
                slots.append(s)
        outs = self._wave(items)
        self._charge(len(outs), charge_authors=False)
        per = _split(list(outs), sizes)
        child_outcomes: list[list[EvalOutcome] | None] = [None] * len(p.parents)
        for s, o in zip(slots, per, strict=True):
            child_outcomes[s] = o
        p.child_outcomes = child_outcomes

    def _finish_iteration(self, p: Pending) -> None:
        st = self.state
        assert p.parent_outcomes is not None and p.proposals is not None and p.child_outcomes is not None
        records: list[ProposalRecord] = []
        accepted: list[int] = []  # indices into records
        seen: set[str] = set()
        for s, parent in enumerate(p.parents):
            prop, child = p.proposals[s], p.child_outcomes[s]
            ps = [o.score for o in p.parent_outcomes[s]]
            rec = ProposalRecord(st.iteration, parent, [st.feedback_ids[i] for i in p.minibatches[s]], ps,
                                 status="", child_template=prop.template)
            if prop.status == "parent_perfect":
                rec.status, rec.reason = "parent_perfect", prop.detail
            elif prop.status in ("failed", "unavailable"):
                rec.status, rec.reason = "reflection_failed", prop.detail
            elif prop.status == "unusable":
                rec.status, rec.reason = "unusable", prop.detail
            elif child is None:
                rec.status, rec.reason = "duplicate", f"same template as candidate {st.pool.index_of(prop.template)}"
            else:
                rec.child_scores = [o.score for o in child]
                better = sum(rec.child_scores) > sum(ps)
                key = prop.template.strip()
                if better and key in seen:
                    rec.status, rec.reason = "duplicate", "same template accepted earlier in this iteration"
                elif better:
                    rec.status, rec.reason = "accepted", f"minibatch sum {sum(rec.child_scores):g} > {sum(ps):g}"
                    seen.add(key)
                    accepted.append(len(records))
                else:
                    rec.status, rec.reason = "rejected", f"minibatch sum {sum(rec.child_scores):g} <= {sum(ps):g}"
            self._count(rec.status)
            records.append(rec)
        if accepted:
            items = [it for r in accepted for it in self._items(records[r].child_template, st.dev_ids)]
            outs = self._wave(items)
            self._charge(len(outs), p.charge)
            for r, scores in zip(accepted, _split([o.score for o in outs], [len(st.dev_ids)] * len(accepted)), strict=True):
                cand = st.pool.add(records[r].child_template, records[r].parent, st.iteration, scores,
                                   st.metric_calls)
                records[r].child, records[r].dev_mean = cand.idx, cand.dev_mean
        st.log.extend(records)
        now = self.hooks.clock()
        st.iteration_stats.append(IterationStats(st.iteration, len(p.parents), len(accepted),
                                                 st.metric_calls - p.calls_at_start,
                                                 round(st.wall_s + (now - self._mark) - p.wall_s_at_start, 4)))
        st.iters_since_accept = 0 if accepted else st.iters_since_accept + 1
        st.iteration += 1
        st.pending = None
        if p.last:
            st.stop_reason = "budget"
        log.info("GEPA iteration %d: %d parents, %d accepted, pool %d, metric calls %d (charged %d), best dev %.3f",
                 st.iteration - 1, len(p.parents), len(accepted), len(st.pool), st.metric_calls, st.charged,
                 st.pool.best().dev_mean)

    def step(self) -> bool:
        """Run the next phase; False when the search has finished."""
        st = self.state
        if st.done:
            return False
        self._check_cancel()
        if not len(st.pool):
            self._evaluate_seed()
            return True
        if st.pending is None:
            reason = self._stop_before_iteration()
            if reason:
                st.stop_reason = reason
                self._checkpoint()
                return False
            st.pending = self._start_iteration()
        elif st.pending.parent_outcomes is None:
            self._evaluate_parents(st.pending)
        elif st.pending.proposals is None:
            self._propose(st.pending)
        elif st.pending.child_outcomes is None:
            self._evaluate_children(st.pending)
        else:
            self._finish_iteration(st.pending)
        self._checkpoint()
        return not st.done

    def run(self) -> SearchState:
        """Run until a stopper fires; cancellation sets `stop_reason` to the returned reason."""
        try:
            while self.step():
                pass
        except Cancelled as e:
            self.state.stop_reason = str(e) or "cancelled"
            self._checkpoint()
        return self.state


def _split(flat: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
    out, at = [], 0
    for n in sizes:
        out.append(list(flat[at:at + n]))
        at += n
    return out
