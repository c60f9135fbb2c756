"""`p2o experiment lr-study`: plain GRPO on one arithmetic setting at several learning rates, the same problems,
seeds and budget for each, to find a learning rate at which the policy learns something at this scale.

    p2o experiment lr-study --out runs/lr_study --lrs 1e-6,1e-5,3e-5,1e-4

Before any training, the initial policy is evaluated on the held-out problems with the trainer's protocol
(greedy + 4 samples at the rollout temperature, `p2o.experiment.pass_rate`): "learned something" means the
held-out accuracy at the end rises above that, by more than the paired bootstrap interval over the held-out
problems (`p2o.experiment.stats.paired_delta`).

The task setting (`TASK`, overridable with --set) is the one where plain GRPO has a signal at all with
SmolLM2-135M: under the strict \\boxed{} reward nearly every plain rollout is wrong, every group has zero
variance and no learning rate can learn anything (`p2o experiment pass-rate` measures this; docs/results.md).

Layout of `--out`: problems.jsonl, heldout.jsonl, study.json (settings; other settings are refused),
initial.json (the initial policy's held-out results), lr<value>/ (a `p2o train` run directory per learning
rate, resumable), lr<value>.log, summary.csv, summary.md, curves/*.png.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from p2o.atomic import atomic_write_json, atomic_write_text
from p2o.experiment import runs
from p2o.experiment.stats import paired_delta

TASK = ("reward.fallback=last_number",)
"""The task setting on top of the base config: with the strict \\boxed{} reward SmolLM2-135M gets (almost) no
reward on plain prompts; with the last-number fallback (a box, when present, still decides) it gets some."""


@dataclass
class Settings:
    """Everything that defines the study; stored in study.json."""

    config: str = "configs/demo_cpu.yaml"
    model: str = "smollm2-135m"
    levels: list[int] = field(default_factory=lambda: [0])
    num_problems: int = 48
    eval_size: int = 32
    seed: int = 1234
    epochs: int = 3
    steps_per_epoch: int = 6
    save_every_steps: int = 3
    lrs: list[float] = field(default_factory=lambda: [1e-6, 1e-5, 3e-5, 1e-4])
    task: list[str] = field(default_factory=lambda: list(TASK))
    overrides: list[str] = field(default_factory=list)


def run_name(lr: float) -> str:
    return f"lr{lr:.0e}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument("--out", default="runs/lr_study", help="study directory")
    parser.add_argument("--config", default=d.config, help="base config shared by every run")
    parser.add_argument("--model", default=d.model, help="model.path")
    parser.add_argument("--lrs", default=",".join(f"{x:g}" for x in d.lrs), help="comma-separated learning rates")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",") if x], default=d.levels,
                        help="comma-separated difficulty levels of p2o.data.arithmetic")
    parser.add_argument("--num-problems", type=int, default=d.num_problems, help="training problems")
    parser.add_argument("--eval-size", type=int, default=d.eval_size, help="held-out problems")
    parser.add_argument("--seed", type=int, default=d.seed, help="problem generator seed (held-out: seed + 1000003)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="epochs (held-out evaluation after each)")
    parser.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch)
    parser.add_argument("--save-every-steps", type=int, default=d.save_every_steps)
    parser.add_argument("--task", action="append", default=None, metavar="KEY=VALUE",
                        help=f"the task setting (replaces the default {' '.join(TASK)}; repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="only (re)write the summary and curves")


def settings_from_args(args: argparse.Namespace) -> Settings:
    try:
        lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--lrs: got {args.lrs!r}; expected comma-separated numbers such as 1e-6,1e-5") from None
    if not lrs or any(not 0 < x < 1 for x in lrs) or len({run_name(x) for x in lrs}) != len(lrs):
        raise ValueError(f"--lrs: got {args.lrs!r}; expected distinct learning rates in (0, 1)")
    for k in ("num_problems", "eval_size", "epochs", "steps_per_epoch"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')}: got {getattr(args, k)}; expected >= 1")
    return Settings(config=args.config, model=args.model, levels=list(args.levels), num_problems=args.num_problems,
                    eval_size=args.eval_size, seed=args.seed, epochs=args.epochs,
                    steps_per_epoch=args.steps_per_epoch, save_every_steps=args.save_every_steps, lrs=lrs,
                    task=list(TASK) if args.task is None else list(args.task), overrides=list(args.set))


def run_overrides(lr: float, s: Settings, out: Path, problems: Path, heldout: Path) -> list[str]:
    """The `p2o train` overrides of one run: the shared setting, then its learning rate and run directory."""
    return [f"model.path={s.model}", f"data.source={problems}", "data.id_key=id", f"data.eval_source={heldout}",
            f"train.epochs={s.epochs}", f"train.steps_per_epoch={s.steps_per_epoch}",
            f"checkpoint.save_every_steps={s.save_every_steps}", "checkpoint.resume=auto", "checkpoint.keep_last=1",
            "logging.progress=false", "p2o.enabled=false", *s.task, *s.overrides, f"optim.lr={lr:g}",
            f"logging.run_dir={out / run_name(lr)}"]


def measure_initial(s: Settings, out: Path, heldout: Path) -> dict:
    """initial.json: the initial policy on the held-out problems (greedy + 4 samples, the trainer's protocol),
    measured once."""
    path = out / "initial.json"
    if path.is_file():
        return json.loads(path.read_text())
    from p2o.config import load_config
    from p2o.data.problem import Problem
    from p2o.experiment.pass_rate import measure
    from p2o.jsonl import read_jsonl

    cfg = load_config(s.config, run_overrides(s.lrs[0], s, out, out / "problems.jsonl", heldout))
    pr = measure(cfg, [Problem.from_dict(d) for d in read_jsonl(heldout)], k=4)
    result = {**pr.row(), "per_problem": pr.per_problem}
    atomic_write_json(path, result, indent=1)
    return result


# ---------------------------------------------------------------------------- results
def run_summary(lr: float, records: list[dict], out: Path, initial: dict | None) -> dict:
    """The summary row of one learning rate from its metrics and held-out files."""
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]

    def mean(rs, key):
        vals = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
        return statistics.fmean(vals) if vals else None

    last_epoch = max((r.get("epoch", 0) for r in steps), default=0)
    row = {"lr": lr, "finished": runs.run_finished(out / run_name(lr)), "steps": len(steps), "epochs": len(epochs),
           "reward_first_epoch": mean([r for r in steps if r.get("epoch", 0) == 0], "reward_mean"),
           "reward_last_epoch": mean([r for r in steps if r.get("epoch", 0) == last_epoch], "reward_mean"),
           "signal_frac": (1 - mean(steps, "zero_adv_frac")) if steps else None,
           "truncated_last_epoch": mean([r for r in steps if r.get("epoch", 0) == last_epoch], "truncated_frac"),
           "response_len_last_epoch": mean([r for r in steps if r.get("epoch", 0) == last_epoch],
                                           "response_len_mean"),
           "grad_norm": mean([r for r in steps if r.get("optimizer_steps")], "grad_norm"),
           "step_s": mean(steps, "time_step_s")}
    for e in epochs:
        row[f"greedy_e{e['epoch'] + 1}"] = e.get("heldout_greedy")
        row[f"avg4_e{e['epoch'] + 1}"] = e.get("heldout_avg4")
    if epochs and initial:
        last = runs.read_eval(out / run_name(lr), "heldout", epochs[-1]["epoch"])
        if last is not None:
            base = {x["id"]: x for x in initial["per_problem"]}
            for key, score in (("greedy", lambda x: float(x["greedy"])), ("avg4", lambda x: x["correct"] / x["n"])):
                d, lo, hi, _ = paired_delta({k: score(v) for k, v in base.items()},
                                            {k: score(v) for k, v in last.items()})
                row[f"delta_{key}"], row[f"delta_{key}_low"], row[f"delta_{key}_high"] = d, lo, hi
    return row


COLUMNS = [("lr", "lr"), ("steps", "steps"), ("greedy", "held-out greedy (initial, epochs)"),
           ("avg4", "held-out avg@4 (initial, epochs)"), ("delta_greedy", "Δ greedy, last vs initial [95% CI]"),
           ("delta_avg4", "Δ avg@4, last vs initial [95% CI]"), ("reward_first_epoch", "reward (epoch 1)"),
           ("reward_last_epoch", "reward (last epoch)"), ("signal_frac", "groups with signal"),
           ("truncated_last_epoch", "truncated (last epoch)"), ("response_len_last_epoch", "tokens/response (last)"),
           ("grad_norm", "grad norm"), ("step_s", "s/step")]


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _cell(row: dict, key: str, initial: dict | None, epochs: int) -> str:
    if key in ("greedy", "avg4"):
        first = initial.get("greedy" if key == "greedy" else "sampled") if initial else None
        return ", ".join(_f(v, 2) for v in [first, *(row.get(f"{key}_e{e}") for e in range(1, epochs + 1))])
    if key.startswith("delta_"):
        if row.get(key) is None:
            return "-"
        return f"{row[key]:+.3f} [{row[key + '_low']:+.3f}, {row[key + '_high']:+.3f}]"
    if key == "lr":
        return f"{row['lr']:g}" + ("" if row.get("finished") else " (unfinished)")
    return _f(row.get(key), 1 if key in ("response_len_last_epoch", "step_s") else 3)


def summary_markdown(rows: list[dict], s: Settings, initial: dict | None) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(r, k, initial, s.epochs) for k, _ in COLUMNS) + " |" for r in rows]
    setting = " ".join([*s.task, *s.overrides])
    lines += ["", f"Plain GRPO (p2o.enabled=false), {s.num_problems} training problems at level(s) "
                  f"{','.join(map(str, s.levels))}, {s.eval_size} held-out, {s.epochs} epochs x {s.steps_per_epoch} "
                  f"steps, model {s.model}, base config {s.config}, task setting: {setting or '(none)'}. Held-out "
                  f"accuracy without templates: greedy, and avg@4 (4 samples at the rollout temperature); 'initial' "
                  f"is the untrained policy. Δ: last epoch minus initial on the same held-out problems, with a "
                  f"95% paired bootstrap interval over the problems. 'groups with signal': 1 - the fraction of "
                  f"zero-variance groups, over all steps."]
    return "\n".join(lines) + "\n"


def summary_csv(rows: list[dict], initial: dict | None) -> str:
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "lr", k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["lr", "initial_greedy", "initial_avg4", *[k for k in keys if k != "lr"]])
    w.writeheader()
    for r in rows:
        w.writerow({**r, "initial_greedy": initial.get("greedy") if initial else None,
                    "initial_avg4": initial.get("sampled") if initial else None})
    return buf.getvalue()


def plot_curves(out: Path, records: dict[float, list[dict]], initial: dict | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = out / "curves"
    d.mkdir(exist_ok=True)
    plots = {"reward": ("step", "reward_mean", "training reward (mean over rollouts)"),
             "signal": ("step", "zero_adv_frac", "groups with signal (1 - zero-variance fraction)"),
             "response_len": ("step", "response_len_mean", "response length (tokens)"),
             "heldout_greedy": ("epoch", "heldout_greedy", "held-out greedy accuracy (no templates)"),
             "heldout_avg4": ("epoch", "heldout_avg4", "held-out avg@4 accuracy (no templates)")}
    written = []
    for stem, (kind, key, title) in plots.items():
        fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
        for lr, recs in records.items():
            pts = [(r["step"], r[key]) for r in recs if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
            if key == "zero_adv_frac":
                pts = [(x, 1 - y) for x, y in pts]
            if kind == "epoch" and initial:
                pts = [(0, initial["greedy" if key == "heldout_greedy" else "sampled"]), *pts]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if kind == "epoch" else None, ms=3,
                        label=f"lr {lr:g}")
        ax.set_title(title)
        ax.set_xlabel("step (held-out points: end of each epoch; 0 = initial)" if kind == "epoch" else "step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(d / f"{stem}.png")
        plt.close(fig)
        written.append(d / f"{stem}.png")
    return written


def write_report(out: Path, s: Settings) -> Path:
    initial = json.loads((out / "initial.json").read_text()) if (out / "initial.json").is_file() else None
    records = {lr: runs.load_records(out / run_name(lr)) for lr in sorted(s.lrs)}
    records = {lr: r for lr, r in records.items() if r}
    rows = [run_summary(lr, recs, out, initial) for lr, recs in records.items()]
    plot_curves(out, records, initial)
    atomic_write_text(out / "summary.csv", summary_csv(rows, initial))
    atomic_write_text(out / "summary.md", "# Learning-rate study: plain GRPO\n\n" + summary_markdown(rows, s, initial)
                      + "\nCurves: curves/reward.png, signal.png, response_len.png, heldout_greedy.png, "
                        "heldout_avg4.png\n")
    return out / "summary.md"


def main(args: argparse.Namespace) -> int:
    try:
        s = settings_from_args(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if not Path(s.config).is_file():
            raise ValueError(f"--config {s.config}: file not found")
        runs.check_settings(out / "study.json", s, free=("lrs",))
    except ValueError as e:
        print(f"p2o experiment lr-study: {e}", file=sys.stderr)
        return 2
    if not args.report_only:
        problems, heldout = runs.write_problem_files(out, s.levels, s.num_problems, s.eval_size, s.seed)
        t = time.time()
        initial = measure_initial(s, out, heldout)
        print(f"initial policy on the held-out problems: greedy {initial['greedy']:.3f}, avg@4 "
              f"{initial['sampled']:.3f} ({time.time() - t:.0f} s)", flush=True)
        for lr in s.lrs:
            name = run_name(lr)
            if runs.run_finished(out / name):
                print(f"{name}: finished earlier, skipped")
                continue
            t = time.time()
            code = runs.run_train(s.config, run_overrides(lr, s, out, problems, heldout), out / f"{name}.log")
            print(f"{name}: exit code {code} after {time.time() - t:.0f} s (log: {out / (name + '.log')})", flush=True)
            if code != 0:
                print(f"p2o experiment lr-study: run {name} did not finish; run the same command again to resume",
                      file=sys.stderr)
                return code
    path = write_report(out, s)
    print(path.read_text())
    print(f"summary: {path}, {out / 'summary.csv'}; curves: {out / 'curves'}")
    return 0

