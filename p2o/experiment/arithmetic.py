"""`p2o experiment arithmetic`: GRPO (K=4), GRPO with 2x rollouts (K=8), P2O Self-Ref (K=4) and its ablation
without context distillation (K=4, `p2o.distill=none`: templated rollouts trained on x+z) on the same
arithmetic problems and token accounting, each arm run with `--seeds N` seeds, each (arm, seed) a resumable
`p2o train` run.

    p2o experiment arithmetic --out runs/arithmetic --seeds 3

Arms are data (`ARMS`): a name, a label and the config overrides that make the arm; adding an arm is one line.
Seed i (0, 1, ...) adds i to the base config's `train.seed`, `rollout.seed`, `data.shuffle_seed` and `gepa.seed`
(seed 0 is the config as given); the problems and the held-out set are the same for every arm and seed, so
held-out results pair by (seed, problem) across arms. Runs go seed by seed (every arm of seed 0 first), so a
study stopped early has complete seeds to compare.

Layout of the experiment directory (`--out`):
    problems.jsonl, heldout.jsonl   the training problems and the held-out set (same generator, disjoint)
    experiment.json                 the settings; a rerun with other settings is refused (more --seeds or other
                                    --arms are allowed)
    <arm>/seed<i>/                  the `p2o train` run directory (metrics.jsonl, evals/, rollouts/, report.html)
    <arm>/seed<i>.log               its output
    summary.md, summary.csv, curves/*.png   written after every run has finished (or with --report-only)

Resumability: every run has `checkpoint.resume=auto` and checkpoints every `--save-every-steps` steps and at
each epoch end, so a killed study continues where it stopped: a finished run (summary.json status "ok") is
skipped, an unfinished one resumes from its latest checkpoint.

Report (summary.md): per arm and epoch, held-out accuracy with the plain prompt (greedy, and avg@4 at the
rollout temperature) as the mean over seeds with a 95% Student-t interval over seeds; per arm, the fraction of
groups with signal, templated-rollout success on hard samples next to the same problems' plain success before
(when mined), in the same epoch by the GRPO arm with the same K and seed (the control), and after their
templated epoch, the mask rate and GEPA's cost; and a paired comparison of the
reference arm (`--compare`, P2O) against every other arm at the last epoch: a paired bootstrap over
(seed, held-out problem) units (`p2o.eval.compare`) and a t-interval over the per-seed differences.

Token accounting (the `tokens` columns): generated tokens of the training rollouts (the loop's `gen_tokens`)
plus, for P2O, GEPA's candidate-evaluation rollouts charged as the GEPA record's `budget_used` x `gepa.eval_n` x
`gepa.eval_max_tokens` (an upper bound: every sample of every evaluation is charged its full length).
Reflection calls (the frozen model writing templates) are not in the token columns.
"""
from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2o.atomic import atomic_write_text
from p2o.experiment import runs
from p2o.experiment.stats import fmt_interval, paired_delta, t_interval


@dataclass(frozen=True)
class Arm:
    """One arm of the experiment: a name, a label and the config overrides that make it that arm."""

    name: str
    label: str
    overrides: tuple[str, ...]


ARMS = {a.name: a for a in (
    Arm("grpo-k4", "GRPO (K=4)", ("p2o.enabled=false", "rollout.n=4")),
    Arm("grpo-k8", "GRPO 2x rollouts (K=8)", ("p2o.enabled=false", "rollout.n=8")),
    Arm("p2o-k4", "P2O Self-Ref (K=4)", ("p2o.enabled=true", "rollout.n=4", "reflection.mode=self")),
    # An ablation is one more line: the P2O arm's overrides plus the switch.
    Arm("p2o-k4-nodistill", "P2O w/o context distillation (K=4)",
        ("p2o.enabled=true", "rollout.n=4", "reflection.mode=self", "p2o.distill=none")),
)}
DEFAULT_ARMS = ["grpo-k4", "grpo-k8", "p2o-k4", "p2o-k4-nodistill"]

TASK = ("reward.fallback=last_number",)
"""The task setting on top of the base config (docs/results.md, the learning-rate study): under the strict
\\boxed{} reward SmolLM2-135M's plain rollouts are (almost) never correct and no arm can learn anything."""

SEED_KEYS = ("train.seed", "rollout.seed", "data.shuffle_seed", "gepa.seed")


@dataclass
class Settings:
    """Everything that defines the experiment; stored in experiment.json."""

    config: str = "configs/demo_cpu.yaml"
    model: str = "smollm2-135m"
    num_problems: int = 40
    eval_size: int = 32
    seed: int = 1234
    """Problem generator seed (not a training seed: see `seeds`)."""
    levels: list[int] = field(default_factory=lambda: [0, 1])
    """[]: `binary_problems` (a op b, the vs-TRL set); else `arithmetic.generate` with these difficulty levels.
    0 and 1: plain GRPO learns level 0 within an epoch (the learning-rate study), level 1 keeps hard samples."""
    epochs: int = 3
    """3 x 5 steps: all arms x 3 seeds in about 3 hours of the 2-core CPU (docs/results.md)."""
    steps_per_epoch: int = 5
    save_every_steps: int = 5
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    seeds: int = 1
    lr: float = 1e-5
    """The lowest rate at which plain GRPO learned within the learning-rate study's budget (docs/results.md)."""
    task: list[str] = field(default_factory=lambda: list(TASK))
    overrides: list[str] = field(default_factory=list)
    compare: str = "p2o-k4"
    """The arm compared against every other arm in the paired comparison."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument("--out", default="runs/arithmetic", help="experiment directory")
    parser.add_argument("--config", default=d.config, help="base config shared by every run")
    parser.add_argument("--model", default=d.model, help="model.path")
    parser.add_argument("--num-problems", type=int, default=d.num_problems, help="training problems")
    parser.add_argument("--eval-size", type=int, default=d.eval_size, help="held-out problems")
    parser.add_argument("--seed", type=int, default=d.seed, help="problem generator seed (held-out: seed + 1000003)")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",") if x], default=d.levels,
                        help="comma-separated difficulty levels of p2o.data.arithmetic; an empty string: the "
                             "binary a op b problems")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch,
                        help="0: every problem once per epoch (num_problems / prompts_per_step)")
    parser.add_argument("--save-every-steps", type=int, default=d.save_every_steps)
    parser.add_argument("--arms", default=",".join(d.arms), help=f"comma-separated subset of {', '.join(ARMS)}")
    parser.add_argument("--seeds", type=int, default=d.seeds, help="training seeds per arm (0..N-1)")
    parser.add_argument("--lr", type=float, default=d.lr, help="optim.lr of every arm")
    parser.add_argument("--task", action="append", default=None, metavar="KEY=VALUE",
                        help=f"the task setting (replaces the default {' '.join(TASK)}; repeatable)")
    parser.add_argument("--compare", default=d.compare, help="the arm compared against every other arm")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="only (re)write curves and summary.md")


def settings_from_args(args: argparse.Namespace) -> Settings:
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms or len(set(arms)) != len(arms):
        raise ValueError(f"--arms: got {args.arms!r}; expected a comma-separated subset of {', '.join(ARMS)}")
    for k in ("num_problems", "eval_size", "epochs", "seeds"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')}: got {getattr(args, k)}; expected >= 1")
    if not 0 < args.lr < 1:
        raise ValueError(f"--lr: got {args.lr}; expected a learning rate in (0, 1)")
    if args.compare not in ARMS:
        raise ValueError(f"--compare: got {args.compare!r}; expected one of {', '.join(ARMS)}")
    return Settings(config=args.config, model=args.model, num_problems=args.num_problems, eval_size=args.eval_size,
                    seed=args.seed, levels=list(args.levels), epochs=args.epochs,
                    steps_per_epoch=args.steps_per_epoch, save_every_steps=args.save_every_steps, arms=arms,
                    seeds=args.seeds, lr=args.lr, task=list(TASK) if args.task is None else list(args.task),
                    overrides=list(args.set), compare=args.compare)


# ---------------------------------------------------------------------------- runs
def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / arm / f"seed{seed}"


def seed_overrides(s: Settings, seed: int) -> list[str]:
    """Seed i: i added to every seed of the base config (with the experiment's overrides applied)."""
    if seed == 0:
        return []
    from p2o.config import load_config

    cfg = load_config(s.config, [*s.task, *s.overrides])
    out = []
    for key in SEED_KEYS:
        section, name = key.split(".")
        out.append(f"{key}={getattr(getattr(cfg, section), name) + seed}")
    return out


def arm_overrides(arm: Arm, s: Settings, out: Path, problems: Path, heldout: Path, seed: int = 0) -> list[str]:
    """The `p2o train` overrides of one (arm, seed) run: shared settings, the task, the arm, the seed."""
    return [f"model.path={s.model}", f"data.source={problems}", "data.id_key=id", f"data.eval_source={heldout}",
            f"train.epochs={s.epochs}", f"train.steps_per_epoch={s.steps_per_epoch}",
            f"checkpoint.save_every_steps={s.save_every_steps}", "checkpoint.resume=auto", "checkpoint.keep_last=1",
            "logging.progress=false", f"optim.lr={s.lr:g}", *s.task, *arm.overrides, *s.overrides,
            *seed_overrides(s, seed), f"logging.run_dir={run_dir(out, arm.name, seed)}"]


# ---------------------------------------------------------------------------- results
def _mean(rs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
    return statistics.fmean(vals) if vals else None


def control_arm(arm: str, arms: list[str]) -> str | None:
    """The GRPO arm among `arms` with the P2O arm `arm`'s K (its plain-prompt control), or None."""
    k = next((o for o in ARMS[arm].overrides if o.startswith("rollout.n=")), None)
    if "p2o.enabled=true" not in ARMS[arm].overrides or k is None:
        return None
    return next((a for a in arms if "p2o.enabled=false" in ARMS[a].overrides and k in ARMS[a].overrides), None)


def arm_summary(records: list[dict], eval_tokens_per_call: int, rollouts: list[dict] | None = None,
                control_rollouts: list[dict] | None = None) -> dict:
    """The summary of one run from its metrics records (and saved rollouts, for the hard samples' plain success
    when mined); a GEPA metric call is charged `eval_tokens_per_call` tokens (gepa.eval_n x gepa.eval_max_tokens).
    `control_rollouts`: the same seed's GRPO run with the same K, whose plain rollouts of the templated problems in
    their templated epochs say what the plain prompt achieved on them at that point of training."""
    from p2o.telemetry.report import template_tables

    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    gepa = [r for r in records if r.get("kind") == "gepa"]
    train_tokens = sum(int(r.get("gen_tokens") or 0) for r in steps)
    gepa_calls = sum(int(r.get("budget_used") or 0) for r in gepa)
    last = epochs[-1] if epochs else {}
    last_epoch = max((r.get("epoch", 0) for r in steps), default=0)
    per_epoch, _ = template_tables(rollouts or [], epochs)
    templ = [r for r in per_epoch if r["templated_rollouts"]]
    templated = {(r["epoch"], r["problem_id"]) for r in rollouts or [] if r["template"]}
    control = [r["reward"] > 0 for r in control_rollouts or []
               if not r["template"] and (r["epoch"], r["problem_id"]) in templated]

    def pooled(key_n: str, key_rate: str) -> float | None:  # a success rate pooled over templated epochs
        rs = [r for r in templ if r.get(key_rate) is not None and r.get(key_n)]
        return sum(r[key_rate] * r[key_n] for r in rs) / sum(r[key_n] for r in rs) if rs else None

    return {
        "steps": len(steps), "epochs": len(epochs),
        "train_tokens": train_tokens, "gepa_eval_calls": gepa_calls, "gepa_tokens": gepa_calls * eval_tokens_per_call,
        "tokens": train_tokens + gepa_calls * eval_tokens_per_call,
        "heldout_greedy": [e.get("heldout_greedy") for e in epochs], "heldout_avg4": [e.get("heldout_avg4") for e in epochs],
        "heldout_greedy_first": epochs[0].get("heldout_greedy") if epochs else None,
        "heldout_greedy_last": last.get("heldout_greedy"), "heldout_avg4_last": last.get("heldout_avg4"),
        "heldout_avg4_first": epochs[0].get("heldout_avg4") if epochs else None,
        "reward_first_epoch": _mean([r for r in steps if r.get("epoch", 0) == 0], "reward_mean"),
        "reward_last_epoch": _mean([r for r in steps if r.get("epoch", 0) == last_epoch], "reward_mean"),
        "zero_adv_frac": _mean(steps, "zero_adv_frac"),
        "signal_frac": (1 - _mean(steps, "zero_adv_frac")) if _mean(steps, "zero_adv_frac") is not None else None,
        "hard_count_last": last.get("hard_count"),
        "templated_success": _mean(steps, "templated_success"), "mask_rate": _mean(steps, "mask_rate"),
        "hard_plain_before": pooled("plain_rollouts_prev_epoch", "plain_success_prev_epoch"),
        "hard_plain_control": sum(control) / len(control) if control else None,
        "hard_plain_after_greedy": pooled("plain_after_problems", "plain_after_greedy"),
        "hard_plain_after_sampled": pooled("plain_after_problems", "plain_after_sampled"),
        # 0 (not missing) for a P2O run whose GEPA rounds produced no template: it trained like GRPO
        "templated_problems": sum(r["problems"] for r in templ) if templ else (0 if gepa else None),
        "gepa_rounds": len(gepa), "assigned": sum(int(r.get("assigned") or 0) for r in gepa),
        "gepa_rounds_with_template": sum(1 for r in gepa if int(r.get("covered_templates") or 0) > 0),
        "gepa_iterations": sum(int(r.get("iteration") or 0) for r in gepa),
        "step_s": _mean(steps, "time_step_s"), "gepa_wall_s": sum(float(r.get("gepa_wall_s") or 0) for r in gepa),
    }


def _interval(vals: list) -> tuple[float | None, float | None, float | None]:
    vals = [v for v in vals if isinstance(v, (int, float))]
    return t_interval(vals) if vals else (None, None, None)


# (key of arm_summary, header): the summary table, each cell the mean over seeds [95% t-interval]
SUMMARY_COLUMNS = [("signal_frac", "groups with signal"), ("reward_first_epoch", "reward (epoch 1)"),
                   ("reward_last_epoch", "reward (last epoch)"), ("templated_success", "templated success (hard)"),
                   ("hard_plain_before", "plain success when mined (hard)"),
                   ("hard_plain_control", "GRPO's plain success, same problems and epoch (hard)"),
                   ("hard_plain_after_greedy", "plain after, greedy (hard)"),
                   ("hard_plain_after_sampled", "plain after, sampled (hard)"), ("mask_rate", "mask rate"),
                   ("gepa_rounds", "GEPA rounds"), ("gepa_rounds_with_template", "rounds with a template"),
                   ("templated_problems", "hard samples rolled out with templates"),
                   ("gepa_tokens", "GEPA eval tokens"), ("gepa_wall_s", "GEPA s"), ("tokens", "tokens"),
                   ("step_s", "s/step")]


def _cell(vals: list, key: str) -> str:
    """Mean [t-interval] over the seeds that have the value; "(n of N seeds)" when some seeds lack it (e.g. the
    hard-sample rates of a P2O seed whose GEPA rounds produced no template)."""
    m, lo, hi = _interval(vals)
    digits = 0 if key in ("gepa_tokens", "tokens", "gepa_wall_s", "gepa_rounds", "templated_problems") else 3
    if key in ("step_s", "gepa_rounds_with_template"):
        digits = 1
    cell = fmt_interval(m, lo, hi, digits)
    have = sum(isinstance(v, (int, float)) for v in vals)
    return cell if m is None or have == len(vals) else f"{cell} ({have} of {len(vals)} seeds)"


def heldout_units(out: Path, arm: str, seeds: list[int], epoch: int) -> dict[str, dict[str, float]] | None:
    """{"greedy": {"seed:problem": 0|1}, "avg4": {"seed:problem": fraction}} at `epoch` over `seeds`; None when a
    seed lacks the per-problem file."""
    units: dict[str, dict[str, float]] = {"greedy": {}, "avg4": {}}
    for seed in seeds:
        per = runs.read_eval(run_dir(out, arm, seed), "heldout", epoch)
        if per is None:
            return None
        for pid, r in per.items():
            units["greedy"][f"{seed}:{pid}"] = float(r["greedy"])
            units["avg4"][f"{seed}:{pid}"] = r["correct"] / r["n"]
    return units


def comparison_rows(out: Path, s: Settings, seeds_done: dict[str, list[int]]) -> list[dict]:
    """The reference arm against every other arm at the last epoch, on the seeds both finished."""
    ref = s.compare
    rows = []
    if ref not in seeds_done:
        return rows
    last = s.epochs - 1
    for other in [a for a in s.arms if a != ref and a in seeds_done]:
        seeds = sorted(set(seeds_done[ref]) & set(seeds_done[other]))
        if not seeds:
            continue
        a, b = heldout_units(out, other, seeds, last), heldout_units(out, ref, seeds, last)
        if a is None or b is None:
            continue
        for metric in ("greedy", "avg4"):
            d, lo, hi, units = paired_delta(a[metric], b[metric])
            per_seed = [statistics.fmean(v for k, v in b[metric].items() if k.startswith(f"{sd}:"))
                        - statistics.fmean(v for k, v in a[metric].items() if k.startswith(f"{sd}:")) for sd in seeds]
            m, tlo, thi = t_interval(per_seed)
            rows.append({"reference": ref, "against": other, "metric": f"held-out {metric} (last epoch)",
                         "seeds": len(seeds), "units": units, "delta": d, "boot_low": lo, "boot_high": hi,
                         "seed_deltas": per_seed, "t_low": tlo, "t_high": thi,
                         "verdict": _verdict(lo, hi)})
    return rows


def _verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "no difference resolved"


def summary_markdown(s: Settings, per_arm: dict[str, list[dict]], comparisons: list[dict]) -> str:
    lines = [f"Arms x seeds: {', '.join(f'{ARMS[a].label}: {len(rs)}' for a, rs in per_arm.items())}. "
             f"Cells: mean over seeds [95% Student-t interval over seeds] (no interval with one seed).", ""]
    # held-out accuracy per epoch
    lines += ["### Held-out accuracy, plain prompt, per epoch", "",
              "| arm | metric | " + " | ".join(f"epoch {e + 1}" for e in range(s.epochs)) + " |",
              "|---|---|" + "---|" * s.epochs]
    for a, rs in per_arm.items():
        for key, name in (("heldout_greedy", "greedy"), ("heldout_avg4", "avg@4")):
            cells = [fmt_interval(*_interval([r[key][e] if e < len(r[key]) else None for r in rs]))
                     for e in range(s.epochs)]
            lines.append(f"| {ARMS[a].label} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "### Training signal, hard samples, GEPA cost", "",
              "| arm | " + " | ".join(h for _, h in SUMMARY_COLUMNS) + " |", "|---" * (len(SUMMARY_COLUMNS) + 1) + "|"]
    for a, rs in per_arm.items():
        lines.append(f"| {ARMS[a].label} | " + " | ".join(_cell([r.get(k) for r in rs], k)
                                                         for k, _ in SUMMARY_COLUMNS) + " |")
    if comparisons:
        lines += ["", f"### Paired comparison: {ARMS[s.compare].label} minus each other arm", "",
                  "| against | metric | seeds | units | Δ | 95% paired bootstrap over (seed, problem) | "
                  "per-seed Δ | 95% t-interval over seeds | reading |", "|---" * 9 + "|"]
        for c in comparisons:
            t = "-" if c["t_low"] is None else f"[{c['t_low']:+.3f}, {c['t_high']:+.3f}]"
            lines.append(f"| {ARMS[c['against']].label} | {c['metric']} | {c['seeds']} | {c['units']} | "
                         f"{c['delta']:+.3f} | [{c['boot_low']:+.3f}, {c['boot_high']:+.3f}] | "
                         f"{', '.join(f'{x:+.3f}' for x in c['seed_deltas'])} | {t} | {c['verdict']} |")
    setting = " ".join([*s.task, *s.overrides])
    lines += ["", f"{s.num_problems} training problems (levels {','.join(map(str, s.levels)) or 'binary a op b'}), "
                  f"{s.eval_size} held-out, problem seed {s.seed}, {s.epochs} epochs"
                  f"{f' x {s.steps_per_epoch} steps' if s.steps_per_epoch else ''}, lr {s.lr:g}, model {s.model}, "
                  f"base config {s.config}, task setting and overrides: {setting or '(none)'}. Held-out accuracy is "
                  f"measured at the end of each epoch without templates. 'groups with signal': 1 - the zero-variance "
                  f"group fraction over all steps. Hard samples (P2O): templated-rollout success, the same problems' "
                  f"plain-prompt success when mined (their rollouts one epoch earlier), the plain rollouts of the same "
                  f"problems in the same epoch by the GRPO arm with the same K and seed (the control: what the plain "
                  f"prompt achieved there), and after their templated epoch (the trainer's evaluation, greedy and 4 "
                  f"samples), pooled over templated epochs. GEPA eval "
                  f"tokens = budget_used x gepa.eval_n x gepa.eval_max_tokens (an upper bound). The paired "
                  f"bootstrap treats (seed, problem) pairs as exchangeable units; the t-interval over the per-seed "
                  f"differences is the more conservative reading with few seeds. '(n of N seeds)': the mean over the "
                  f"seeds that have the value (a P2O seed whose GEPA rounds kept no template has no templated "
                  f"rollouts and trains like GRPO; 'rounds with a template' counts the rounds whose assignment "
                  f"holds a non-empty template)."]
    return "\n".join(lines) + "\n"


def summary_csv(per_arm: dict[str, list[dict]], seeds_of: dict[str, list[int]]) -> str:
    """One row per (arm, seed) with every scalar of `arm_summary` and the held-out accuracy per epoch."""
    rows = []
    for a, rs in per_arm.items():
        for seed, r in zip(seeds_of[a], rs, strict=True):
            row = {"arm": a, "seed": seed, **{k: v for k, v in r.items() if not isinstance(v, list)}}
            for key in ("heldout_greedy", "heldout_avg4"):
                row.update({f"{key}_e{e + 1}": v for e, v in enumerate(r[key])})
            rows.append(row)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _save_plot(fig: Any, ax: Any, path: Path, title: str, xlabel: str) -> Path:
    """Title, x label (integer ticks: epochs and steps), grid and legend on `ax`; `fig` saved to `path`
    (returned)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_curves(out: Path, s: Settings, records: dict[str, list[list[dict]]]) -> list[Path]:
    """Per arm: held-out accuracy per epoch (mean over seeds, 95% t-band) and step curves (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = out / "curves"
    d.mkdir(exist_ok=True)
    written = []
    for key, title in (("heldout_greedy", "held-out accuracy, greedy (no templates)"),
                       ("heldout_avg4", "held-out accuracy, avg@4 (no templates)"),
                       ("hard_plain_greedy", "hard samples after their templated epoch, plain greedy (P2O)"),
                       ("hard_plain_avg4", "hard samples after their templated epoch, plain avg@4 (P2O)")):
        fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
        drawn = 0
        for a, seeds in records.items():
            pts = []  # (epoch, mean, low, high)
            for e in range(s.epochs):
                vals = [r[key] for recs in seeds for r in recs
                        if r.get("kind") == "epoch" and r.get("epoch") == e and isinstance(r.get(key), (int, float))]
                if vals:
                    m, lo, hi = t_interval(vals)
                    pts.append((e + 1, m, m if lo is None else lo, m if hi is None else hi))
            if pts:
                with_value = sum(any(r.get("kind") == "epoch" and isinstance(r.get(key), (int, float)) for r in recs)
                                 for recs in seeds)  # a P2O seed without templates has no hard-sample points
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                        label=f"{ARMS[a].label} ({with_value} of {len(seeds)} seeds)")
                ax.fill_between([p[0] for p in pts], [p[2] for p in pts], [p[3] for p in pts], alpha=0.15)
                drawn += 1
        if drawn:
            written.append(_save_plot(fig, ax, d / f"{key}.png", title, "epoch"))
        plt.close(fig)
    for key, title in (("reward_mean", "training reward (mean over seeds)"),
                       ("zero_adv_frac", "zero-variance group fraction (mean over seeds)"),
                       ("templated_success", "templated-rollout success (P2O, seeds with templates)"),
                       ("mask_rate", "context-ratio mask rate (P2O, seeds with templates)")):
        fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
        drawn = 0
        for a, seeds in records.items():
            by_step: dict[int, list[float]] = {}
            for recs in seeds:
                for r in recs:
                    if r.get("kind") == "step" and isinstance(r.get(key), (int, float)):
                        by_step.setdefault(r["step"], []).append(r[key])
            if by_step:
                xs = sorted(by_step)
                ax.plot(xs, [statistics.fmean(by_step[x]) for x in xs], label=ARMS[a].label)
                drawn += 1
        if drawn:
            written.append(_save_plot(fig, ax, d / f"{key}.png", title, "step"))
        plt.close(fig)
    return written


def write_report(out: Path, s: Settings) -> Path:
    from p2o.config import load_config
    from p2o.telemetry.metrics import read_metrics
    from p2o.telemetry.report import _read_rollouts

    def rollouts_of(rdir: Path) -> list[dict]:  # saved rollouts with their epochs
        return _read_rollouts(rdir, list(read_metrics(rdir, "step")))

    def tokens_per_call(rdir: Path) -> int:  # from the run's own resolved config (the base config may have changed)
        g = load_config(rdir / "config.yaml").gepa
        return g.eval_n * g.eval_max_tokens

    per_arm: dict[str, list[dict]] = {}
    records: dict[str, list[list[dict]]] = {}
    seeds_of: dict[str, list[int]] = {}
    finished: dict[str, list[int]] = {}
    for a in s.arms:
        for seed in range(s.seeds):
            rdir = run_dir(out, a, seed)
            recs = runs.load_records(rdir)
            if not recs or not (rdir / "config.yaml").is_file():
                continue
            control = control_arm(a, s.arms)
            cdir = run_dir(out, control, seed) if control else None
            control_rollouts = rollouts_of(cdir) if cdir is not None and (cdir / "metrics.jsonl").is_file() else None
            per_arm.setdefault(a, []).append(arm_summary(recs, tokens_per_call(rdir), rollouts_of(rdir),
                                                         control_rollouts))
            records.setdefault(a, []).append(recs)
            seeds_of.setdefault(a, []).append(seed)
            if runs.run_finished(rdir):
                finished.setdefault(a, []).append(seed)
    comparisons = comparison_rows(out, s, finished)
    plot_curves(out, s, records)
    atomic_write_text(out / "summary.csv", summary_csv(per_arm, seeds_of))
    md = ("# Arithmetic experiment: " + " vs ".join(ARMS[a].label for a in s.arms) + "\n\n"
          + summary_markdown(s, per_arm, comparisons)
          + "\nCurves: " + ", ".join(f"curves/{p.name}" for p in sorted((out / "curves").glob("*.png"))) + "\n")
    atomic_write_text(out / "summary.md", md)
    return out / "summary.md"


def main(args: argparse.Namespace) -> int:
    try:
        s = settings_from_args(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if not Path(s.config).is_file():
            raise ValueError(f"--config {s.config}: file not found")
        runs.check_settings(out / "experiment.json", s, free=("arms", "seeds", "compare"))
    except ValueError as e:
        print(f"p2o experiment arithmetic: {e}", file=sys.stderr)
        return 2
    if not args.report_only:
        problems, heldout = runs.write_problem_files(out, s.levels, s.num_problems, s.eval_size, s.seed)
        for seed in range(s.seeds):
            for name in s.arms:
                rdir = run_dir(out, name, seed)
                if runs.run_finished(rdir):
                    print(f"{name} seed {seed}: finished earlier, skipped")
                    continue
                rdir.parent.mkdir(parents=True, exist_ok=True)
                t = time.time()
                logf = rdir.parent / f"seed{seed}.log"
                code = runs.run_train(s.config, arm_overrides(ARMS[name], s, out, problems, heldout, seed), logf)
                print(f"{name} seed {seed}: exit code {code} after {time.time() - t:.0f} s (log: {logf})", flush=True)
                if code != 0:
                    print(f"p2o experiment arithmetic: {name} seed {seed} did not finish; run the same command again "
                          f"to resume", file=sys.stderr)
                    return code
    path = write_report(out, s)
    print(path.read_text())
    print(f"summary: {path}, {out / 'summary.csv'}; curves: {out / 'curves'}")
    return 0
