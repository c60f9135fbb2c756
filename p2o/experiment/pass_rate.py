"""`p2o experiment pass-rate`: how often the initial policy answers a task setting correctly, before any training.

GRPO learns only from groups whose K rewards differ; when (almost) every plain rollout is wrong there is no
signal at any learning rate. This probe measures that cheaply (generation only, no trainer): for each problem,
one greedy response and K sampled ones at the rollout temperature, through the configured engine, the training
prompt (`prompt.user_template`, `prompt.system`) and the training verifier (`reward.*`). It reports:

    sampled      mean reward of the sampled responses (the expected training reward at step 1)
    greedy       greedy accuracy (what the held-out greedy evaluation measures)
    signal       fraction of problems whose K rewards are not all equal (groups with a non-zero advantage)
    pass@K       fraction of problems with at least one correct sample
    no_answer    fraction of sampled responses from which no answer could be extracted
    truncated    fraction of sampled responses cut at max_new_tokens

Problems come from `--problems FILE` (JSON Lines, `p2o.data.problem.Problem`) or the arithmetic generator
(`--levels`, `--num-problems`, `--seed`). Every other setting is the config (`--config`, `--set KEY=VALUE`).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from p2o.atomic import atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class PassRate:
    """The probe's result for one setting (fractions in [0, 1])."""

    problems: int
    k: int
    sampled: float
    greedy: float
    signal: float
    pass_at_k: float
    no_answer: float
    truncated: float
    mean_tokens: float
    wall_s: float
    per_problem: list[dict]
    """[{"id", "greedy": 0|1, "correct": correct samples, "n": k}] (the layout of the trainer's evals/ files)"""

    def row(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "per_problem"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/demo_cpu.yaml", help="base config (prompt, rollout, reward)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--problems", default="", help="JSON Lines problem file (default: the arithmetic generator)")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",") if x], default=[0],
                        help="arithmetic difficulty levels (comma-separated; ignored with --problems)")
    parser.add_argument("--num-problems", type=int, default=32, help="problems (first N of --problems)")
    parser.add_argument("--seed", type=int, default=1234, help="arithmetic generator seed")
    parser.add_argument("--k", type=int, default=0, help="samples per problem (0: rollout.n)")
    parser.add_argument("--out", default="", help="write pass_rate.json here (a directory); default: print only")


def load_problems(path: str, levels: list[int], num: int, seed: int) -> list:
    from p2o.data.arithmetic import generate
    from p2o.data.problem import Problem
    from p2o.jsonl import iter_jsonl

    if path:
        return [Problem.from_dict(d) for _, d in zip(range(num), iter_jsonl(path), strict=False)]
    return generate(num, levels, seed=seed)


def measure(cfg, problems: list, k: int, engine=None) -> PassRate:
    """Greedy + `k` sampled responses per problem with the plain prompt x; verdicts from `cfg.reward`.
    `engine`: a `p2o.rollout` engine (default: `build_engine(cfg.rollout, cfg.model, ...)` for `cfg.model.path`)."""
    from transformers import AutoTokenizer

    from p2o import prompts
    from p2o.models import resolve_model_dir
    from p2o.reward import Verifier
    from p2o.rollout.engine import GenerationRequest, SamplingParams

    if not problems:
        raise ValueError("pass-rate: no problems")
    model_dir = resolve_model_dir(cfg.model.path, cfg.model.cache_dir, cfg.model.init_seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if engine is None:
        from p2o.rollout.factory import build_engine

        engine = build_engine(cfg.rollout, cfg.model, model_dir)
    r = cfg.rollout
    ids = [prompts.encode(tok, prompts.messages(p.question, None, cfg.prompt.user_template, cfg.prompt.system),
                          cfg.model.thinking) for p in problems]
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=r.max_new_tokens)
    sampled = SamplingParams(n=k, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                             max_new_tokens=r.max_new_tokens, seed=r.seed)
    t = time.time()
    gens = engine.generate([GenerationRequest(i, greedy, f"g{j}") for j, i in enumerate(ids)]
                           + [GenerationRequest(i, sampled, f"s{j}") for j, i in enumerate(ids)])
    wall = time.time() - t
    n = len(problems)
    with Verifier(cfg.reward) as v:
        g_verdicts = v.score_many([(gl[0].text, p.answer) for gl, p in zip(gens[:n], problems, strict=True)])
        s_verdicts = v.score_many([(g.text, p.answer) for gl, p in zip(gens[n:], problems, strict=True) for g in gl])
    per, samples = [], [g for gl in gens[n:] for g in gl]
    for j, p in enumerate(problems):
        correct = sum(x.correct for x in s_verdicts[j * k:(j + 1) * k])
        per.append({"id": p.id, "greedy": int(g_verdicts[j].correct), "correct": correct, "n": k})
    return PassRate(
        problems=n, k=k, sampled=sum(x["correct"] for x in per) / (n * k), greedy=sum(x["greedy"] for x in per) / n,
        signal=sum(0 < x["correct"] < k for x in per) / n, pass_at_k=sum(x["correct"] > 0 for x in per) / n,
        no_answer=sum(x.extracted is None for x in s_verdicts) / len(s_verdicts),
        truncated=sum(g.finish_reason == "length" for g in samples) / len(samples),
        mean_tokens=sum(len(g.response_ids) for g in samples) / len(samples), wall_s=round(wall, 1), per_problem=per)


def markdown(rows: list[tuple[str, PassRate]]) -> str:
    """A table with one row per (label, result)."""
    keys = ["problems", "k", "sampled", "greedy", "signal", "pass_at_k", "no_answer", "truncated", "mean_tokens",
            "wall_s"]
    lines = ["| setting | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for label, pr in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) and k not in ("mean_tokens", "wall_s") else str(v)
                 for k, v in pr.row().items()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    from p2o.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, list(args.set))
        if args.num_problems < 1 or args.k < 0:
            raise ValueError(f"--num-problems {args.num_problems} / --k {args.k}: expected >= 1 / >= 0")
        problems = load_problems(args.problems, args.levels, args.num_problems, args.seed)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"p2o experiment pass-rate: {e}", file=sys.stderr)
        return 2
    k = args.k or cfg.rollout.n
    pr = measure(cfg, problems, k)
    label = " ".join(args.set) or args.config
    print(markdown([(label, pr)]))
    if args.out:
        atomic_write_json(Path(args.out) / "pass_rate.json",
                          {"config": args.config, "overrides": list(args.set), "levels": args.levels,
                           "problems_file": args.problems, **asdict(pr)}, indent=1)
    return 0
