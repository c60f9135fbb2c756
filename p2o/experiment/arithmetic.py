"""`p2o experiment arithmetic`: GRPO (K=4), GRPO with 2x rollouts (K=8) and P2O Self-Ref (K=4) on the same
arithmetic problems, seeds and token accounting, each arm a resumable `p2o train` run.

Layout of the experiment directory (`--out`):
    problems.jsonl, heldout.jsonl   the training problems and the held-out set (same generator, disjoint)
    experiment.json                 the settings; a rerun with other settings is refused (use another --out)
    <arm>/                          the arm's `p2o train` run directory (metrics.jsonl, checkpoints/, summary.json)
    <arm>.log                       its output
    curves/*.png, summary.md        written after every arm has finished

Resumability: every arm runs with `checkpoint.resume=auto` (and checkpoints every `--save-every-steps`
steps and at each epoch end), so a killed experiment continues where it stopped: a finished arm
(summary.json status "ok") is skipped, an unfinished one resumes from its latest checkpoint.

Token accounting (the `tokens` columns): generated tokens of the training rollouts (the loop's
`gen_tokens`) plus, for P2O, GEPA's candidate-evaluation rollouts charged as the GEPA record's
`budget_used` x `gepa.eval_n` x `gepa.eval_max_tokens` (an upper bound: every sample of every evaluation is
charged its full length).
Reflection calls (the frozen model writing templates) are listed apart, as `reflection calls`.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    """One training run of the experiment: a name and the config overrides that make it that arm."""

    name: str
    label: str
    overrides: tuple[str, ...]


ARMS = {
    "grpo-k4": Arm("grpo-k4", "GRPO (K=4)", ("p2o.enabled=false", "rollout.n=4")),
    "grpo-k8": Arm("grpo-k8", "GRPO 2x rollouts (K=8)", ("p2o.enabled=false", "rollout.n=8")),
    "p2o-k4": Arm("p2o-k4", "P2O Self-Ref (K=4)", ("p2o.enabled=true", "rollout.n=4", "reflection.mode=self")),
}
CURVES = {  # file stem -> (metric, record kind, title)
    "reward": ("reward_mean", "step", "training reward (mean over rollouts)"),
    "heldout_greedy": ("heldout_greedy", "epoch", "held-out accuracy, greedy (no templates)"),
    "heldout_avg4": ("heldout_avg4", "epoch", "held-out accuracy, avg@4 (no templates)"),
    "zero_adv_frac": ("zero_adv_frac", "step", "zero-variance group fraction"),
    "hard_count": ("hard_count", "epoch", "hard samples at epoch end"),
    "templated_success": ("templated_success", "step", "templated-rollout success (P2O)"),
    "mask_rate": ("mask_rate", "step", "context-ratio mask rate (P2O)"),
}


@dataclass
class Settings:
    """Everything that defines the experiment; stored in experiment.json."""

    config: str = "configs/demo_cpu.yaml"
    model: str = "smollm2-135m"
    num_problems: int = 256
    eval_size: int = 64
    seed: int = 1234
    levels: list[int] = field(default_factory=list)
    """[]: `binary_problems` (a op b, the vs-TRL set); else `arithmetic.generate` with these difficulty levels."""
    epochs: int = 4
    steps_per_epoch: int = 0
    save_every_steps: int = 4
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    overrides: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument("--out", default="runs/arithmetic", help="experiment directory")
    parser.add_argument("--config", default=d.config, help="base config shared by every arm")
    parser.add_argument("--model", default=d.model, help="model.path")
    parser.add_argument("--num-problems", type=int, default=d.num_problems, help="training problems")
    parser.add_argument("--eval-size", type=int, default=d.eval_size, help="held-out problems")
    parser.add_argument("--seed", type=int, default=d.seed, help="problem generator seed (held-out: seed + 1000003)")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",") if x], default=d.levels,
                        help="comma-separated difficulty levels of p2o.data.arithmetic (e.g. 0,1); "
                             "default: binary a op b problems")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch,
                        help="0: every problem once per epoch (num_problems / prompts_per_step)")
    parser.add_argument("--save-every-steps", type=int, default=d.save_every_steps)
    parser.add_argument("--arms", default=",".join(d.arms), help=f"comma-separated subset of {', '.join(ARMS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every arm (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="only (re)write curves and summary.md")


# ---------------------------------------------------------------------------- data
def write_problem_files(out: Path, s: Settings) -> tuple[Path, Path]:
    """problems.jsonl and heldout.jsonl (generator seed + 1000003; training questions and repeats removed)."""
    from p2o.data.arithmetic import binary_problems, generate
    from p2o.data.loaders import write_jsonl

    def problems(n: int, seed: int, prefix: str):
        if s.levels:
            return generate(n, s.levels, seed=seed, id_prefix=prefix)
        return binary_problems(n, seed=seed, id_prefix=prefix)

    train = problems(s.num_problems, s.seed, "arith" if s.levels else "binop")
    seen = {p.question for p in train}
    heldout = []
    for p in problems(s.eval_size * 4 + 64, s.seed + 1_000_003, "heldout"):
        if p.question not in seen and len(heldout) < s.eval_size:
            heldout.append(p)
            seen.add(p.question)
    if len(heldout) < s.eval_size:
        raise ValueError(f"--eval-size {s.eval_size}: only {len(heldout)} held-out problems differ from training")
    write_jsonl(out / "problems.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)
    return out / "problems.jsonl", out / "heldout.jsonl"


def check_settings(out: Path, s: Settings) -> None:
    """Write experiment.json, or refuse when the directory holds an experiment with other settings."""
    path = out / "experiment.json"
    mine = asdict(s)
    if path.is_file():
        theirs = json.loads(path.read_text())
        default = asdict(Settings())  # a key added after the experiment was started has its default there
        diff = sorted(k for k in mine if k != "arms" and theirs.get(k, default[k]) != mine[k])
        if diff:
            raise ValueError(f"{path}: the experiment there has other settings ({', '.join(diff)}); "
                             f"use another --out or the same options")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(mine, indent=2))
    tmp.replace(path)


# ---------------------------------------------------------------------------- arms
def arm_overrides(arm: Arm, s: Settings, out: Path, problems: Path, heldout: Path) -> list[str]:
    return [f"model.path={s.model}", f"data.source={problems}", "data.id_key=id", f"data.eval_source={heldout}",
            f"train.epochs={s.epochs}", f"train.steps_per_epoch={s.steps_per_epoch}",
            f"checkpoint.save_every_steps={s.save_every_steps}", "checkpoint.resume=auto",
            "logging.progress=false", *arm.overrides, *s.overrides, f"logging.run_dir={out / arm.name}"]


def arm_finished(run_dir: Path) -> bool:
    p = run_dir / "summary.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("status") == "ok"
    except json.JSONDecodeError:
        return False


def run_arm(arm: Arm, s: Settings, out: Path, problems: Path, heldout: Path) -> int:
    """Run (or resume) one arm as `p2o train`; returns its exit code."""
    cmd = [sys.executable, "-m", "p2o.cli", "train", "--config", s.config,
           *arm_overrides(arm, s, out, problems, heldout)]
    log.info("arm %s: %s", arm.name, " ".join(cmd))
    with (out / f"{arm.name}.log").open("a") as logf:
        logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: {' '.join(cmd)}\n")
        logf.flush()
        return subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT)


# ---------------------------------------------------------------------------- results
def load_records(run_dir: Path) -> list[dict]:
    from p2o.telemetry.metrics import read_metrics

    return list(read_metrics(run_dir))


def arm_summary(records: list[dict], eval_tokens_per_call: int) -> dict:
    """The summary-table row of one arm from its metrics records; a GEPA metric call is charged
    `eval_tokens_per_call` tokens (gepa.eval_n x gepa.eval_max_tokens)."""
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    gepa = [r for r in records if r.get("kind") == "gepa"]
    train_tokens = sum(int(r.get("gen_tokens") or 0) for r in steps)
    gepa_calls = sum(int(r.get("budget_used") or 0) for r in gepa)
    gepa_tokens = gepa_calls * eval_tokens_per_call
    last = epochs[-1] if epochs else {}
    last_epoch = max((r.get("epoch", 0) for r in steps), default=0)
    last_steps = [r for r in steps if r.get("epoch", 0) == last_epoch]

    def mean(rs, key):
        vals = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
        return statistics.fmean(vals) if vals else None

    return {
        "steps": len(steps), "epochs": len(epochs),
        "train_tokens": train_tokens, "gepa_eval_calls": gepa_calls, "gepa_tokens": gepa_tokens,
        "tokens": train_tokens + gepa_tokens,
        "heldout_greedy_first": epochs[0].get("heldout_greedy") if epochs else None,
        "heldout_greedy_last": last.get("heldout_greedy"), "heldout_avg4_last": last.get("heldout_avg4"),
        "heldout_avg4_first": epochs[0].get("heldout_avg4") if epochs else None,
        "reward_first_epoch": mean([r for r in steps if r.get("epoch", 0) == 0], "reward_mean"),
        "reward_last_epoch": mean(last_steps, "reward_mean"),
        "zero_adv_frac": mean(steps, "zero_adv_frac"), "hard_count_last": last.get("hard_count"),
        "templated_success": mean(steps, "templated_success"), "mask_rate": mean(steps, "mask_rate"),
        "gepa_rounds": len(gepa), "assigned": sum(int(r.get("assigned") or 0) for r in gepa),
        "step_s": mean(steps, "time_step_s"), "gepa_wall_s": sum(float(r.get("gepa_wall_s") or 0) for r in gepa),
    }


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


SUMMARY_COLUMNS = [("arm", "arm"), ("steps", "steps"), ("epochs", "epochs"), ("train_tokens", "rollout tokens"),
                   ("gepa_tokens", "GEPA eval tokens"), ("tokens", "tokens"),
                   ("heldout_greedy_first", "held-out greedy (epoch 1)"),
                   ("heldout_greedy_last", "held-out greedy (last)"), ("heldout_avg4_first", "avg@4 (epoch 1)"),
                   ("heldout_avg4_last", "avg@4 (last)"), ("reward_first_epoch", "reward (epoch 1)"),
                   ("reward_last_epoch", "reward (last epoch)"), ("zero_adv_frac", "zero-var groups"),
                   ("hard_count_last", "hard (last epoch)"), ("templated_success", "templated success"),
                   ("mask_rate", "mask rate"), ("gepa_rounds", "GEPA rounds"), ("step_s", "s/step"),
                   ("gepa_wall_s", "GEPA s")]


def summary_markdown(rows: list[dict], s: Settings) -> str:
    head = "| " + " | ".join(h for _, h in SUMMARY_COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in SUMMARY_COLUMNS) + " |" for r in rows]
    note = (f"\n{s.num_problems} training problems, {s.eval_size} held-out, seed {s.seed}, {s.epochs} epochs"
            f"{f' x {s.steps_per_epoch} steps' if s.steps_per_epoch else ''}, model {s.model}, base config "
            f"{s.config}{(', overrides: ' + ' '.join(s.overrides)) if s.overrides else ''}. Held-out accuracy is "
            f"measured at the end of each epoch without templates. GEPA eval tokens = budget_used x "
            f"gepa.eval_n x gepa.eval_max_tokens (an upper bound).\n")
    return "\n".join([head, sep, *body]) + "\n" + note


def plot_curves(out: Path, records_by_arm: dict[str, list[dict]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = out / "curves"
    d.mkdir(exist_ok=True)
    written = []
    for stem, (key, kind, title) in CURVES.items():
        fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
        drawn = 0
        for name, recs in records_by_arm.items():
            pts = [((r["epoch"] + 1) if kind == "epoch" else r["step"], r[key]) for r in recs
                   if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=ARMS[name].label)
                drawn += 1
        if drawn:
            ax.set_title(title)
            ax.set_xlabel("epoch" if kind == "epoch" else "step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(d / f"{stem}.png")
            written.append(d / f"{stem}.png")
        plt.close(fig)
    return written


def write_report(out: Path, s: Settings) -> Path:
    from p2o.config import load_config

    def tokens_per_call(arm: str) -> int:  # from the arm's own resolved config (the base config may have changed)
        resolved = out / arm / "config.yaml"
        g = load_config(resolved if resolved.is_file() else s.config, [] if resolved.is_file() else s.overrides).gepa
        return g.eval_n * g.eval_max_tokens

    records = {a: load_records(out / a) for a in s.arms if (out / a / "metrics.jsonl").is_file()}
    rows = [{"arm": ARMS[a].label, **arm_summary(recs, tokens_per_call(a))} for a, recs in records.items()]
    plot_curves(out, records)
    path = out / "summary.md"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# Arithmetic experiment: GRPO vs GRPO 2x rollouts vs P2O\n\n" + summary_markdown(rows, s)
                   + "\nCurves: " + ", ".join(f"curves/{k}.png" for k in CURVES) + "\n")
    tmp.replace(path)
    return path


def settings_from_args(args: argparse.Namespace) -> Settings:
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ValueError(f"--arms: got {args.arms!r}; expected a comma-separated subset of {', '.join(ARMS)}")
    for k in ("num_problems", "eval_size", "epochs"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')}: got {getattr(args, k)}; expected >= 1")
    return Settings(config=args.config, model=args.model, num_problems=args.num_problems, eval_size=args.eval_size,
                    seed=args.seed, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                    save_every_steps=args.save_every_steps, arms=arms, overrides=list(args.set))


def main(args: argparse.Namespace) -> int:
    try:
        s = settings_from_args(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if not Path(s.config).is_file():
            raise ValueError(f"--config {s.config}: file not found")
        check_settings(out, s)
    except ValueError as e:
        print(f"p2o experiment arithmetic: {e}", file=sys.stderr)
        return 2
    if not args.report_only:
        problems, heldout = write_problem_files(out, s)
        for name in s.arms:
            arm = ARMS[name]
            if arm_finished(out / name):
                print(f"{name}: finished earlier, skipped")
                continue
            t = time.time()
            code = run_arm(arm, s, out, problems, heldout)
            print(f"{name}: exit code {code} after {time.time() - t:.0f} s (log: {out / (name + '.log')})")
            if code != 0:
                print(f"p2o experiment arithmetic: arm {name} did not finish; run the same command again to resume",
                      file=sys.stderr)
                return code
    path = write_report(out, s)
    print(path.read_text())
    print(f"summary: {path}; curves: {out / 'curves'}")
    return 0
