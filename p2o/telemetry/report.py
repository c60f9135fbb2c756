"""The run report: PNG plots + report.html from a run directory's metrics.jsonl.

Plots: training reward (P2O vs a baseline run when given), hard samples per epoch, templated-rollout success
vs the plain prompt, mask rate / zero-advantage groups, held-out accuracy, and the step-time breakdown.
Tables (from the saved rollouts, `logging.save_rollouts`): per epoch, the templated rollouts' success next to
the same problems' success with the plain prompt before (one epoch earlier, when mined as hard) and after the
templated epoch (the trainer's `hard_plain_*` epoch evaluation); per template, its rollouts and successes.
Written at the end of `p2o train` and on demand by `p2o report RUN_DIR [--baseline RUN_DIR]`.
"""
from __future__ import annotations

import html
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from p2o.atomic import atomic_write_text
from p2o.jsonl import read_jsonl
from p2o.telemetry.metrics import read_metrics  # noqa: E402

TIME_KEYS = ["time_generate_s", "time_verify_s", "time_old_logprob_s", "time_update_s", "time_weight_sync_s"]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _plot(path: Path, title: str, ylabel: str, lines: list[tuple[str, list, list]], xlabel: str = "step") -> str | None:
    lines = [ln for ln in lines if ln[1]]
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    for label, xs, ys in lines:
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs
    ax.grid(alpha=0.3)
    if len(lines) > 1 or lines[0][0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def _time_breakdown(path: Path, steps: list[dict]) -> str | None:
    if not steps:
        return None
    means = {k.removeprefix("time_").removesuffix("_s"): statistics.fmean(s.get(k) or 0.0 for s in steps)
             for k in TIME_KEYS}
    fig, ax = plt.subplots(figsize=(8, 2.2), dpi=110)
    left = 0.0
    for name, v in means.items():
        ax.barh([0], [v], left=left, label=f"{name} {v:.2f}s")
        left += v
    ax.set_yticks([])
    ax.set_xlabel("mean seconds per step")
    ax.set_title("Step time breakdown")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def _table(rows: list[dict], keys: list[str]) -> str:
    if not rows:
        return "<p><i>none</i></p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = ""
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v if v is not None else ''))}</td>")
        body += "<tr>" + "".join(cells) + "</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _read_rollouts(run: Path, steps: list[dict]) -> list[dict]:
    """Saved rollouts with their epoch (from the step records); [] when none were saved."""
    epoch_of = {s["step"]: s.get("epoch") for s in steps}
    rows = []
    for f in sorted((run / "rollouts").glob("step_*.jsonl")):
        step = int(f.stem.removeprefix("step_"))
        for r in read_jsonl(f):
            rows.append({"step": step, "epoch": epoch_of.get(step), "problem_id": r["problem_id"],
                         "template": r.get("template") or "", "reward": float(r.get("reward") or 0.0)})
    return rows


def template_tables(rollouts: list[dict], epochs: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """(per epoch, per template) success tables over rollouts [{epoch, problem_id, template, reward}].

    Per epoch with templated rollouts: their count and success, the success of the same problems' plain
    (untemplated) rollouts in the previous epoch, i.e. when they were mined as hard ("before"), and, from that
    epoch's record in `epochs` (`hard_plain_*`, written by the trainer at the epoch end), their plain-prompt
    success after the epoch's training: greedy and sampled at the rollout temperature ("after"). Per template:
    rollouts, distinct problems and success, most used first."""
    after = {e.get("epoch"): e for e in epochs or [] if "hard_plain_size" in e}
    per_epoch = []
    for e in sorted({r["epoch"] for r in rollouts if r["template"] and r["epoch"] is not None}):
        templ = [r for r in rollouts if r["epoch"] == e and r["template"]]
        pids = {r["problem_id"] for r in templ}
        before = [r for r in rollouts if r["epoch"] == e - 1 and not r["template"] and r["problem_id"] in pids]
        per_epoch.append({
            "epoch": e, "problems": len(pids), "templated_rollouts": len(templ),
            "templated_correct": int(sum(r["reward"] > 0 for r in templ)),
            "templated_success": sum(r["reward"] > 0 for r in templ) / len(templ),
            "plain_rollouts_prev_epoch": len(before),
            "plain_success_prev_epoch": (sum(r["reward"] > 0 for r in before) / len(before)) if before else None,
            "plain_after_problems": after.get(e, {}).get("hard_plain_size"),
            "plain_after_greedy": after.get(e, {}).get("hard_plain_greedy"),
            "plain_after_sampled": after.get(e, {}).get("hard_plain_avg4")})
    per_template = []
    for t in {r["template"] for r in rollouts if r["template"]}:
        mine = [r for r in rollouts if r["template"] == t]
        per_template.append({"template": t, "rollouts": len(mine), "problems": len({r["problem_id"] for r in mine}),
                             "correct": int(sum(r["reward"] > 0 for r in mine)),
                             "success": sum(r["reward"] > 0 for r in mine) / len(mine)})
    per_template.sort(key=lambda r: (-r["rollouts"], r["template"]))
    return per_epoch, per_template


def write_report(run_dir: str | Path, baseline_dir: str | Path | None = None) -> Path:
    """Write plots and report.html into run_dir; returns the report path."""
    run = Path(run_dir)
    if not (run / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run}: no metrics.jsonl (is this a run directory?)")
    steps = list(read_metrics(run, "step"))
    epochs = list(read_metrics(run, "epoch"))
    gepa = list(read_metrics(run, "gepa"))
    base_steps = list(read_metrics(baseline_dir, "step")) if baseline_dir else []
    figs = []
    label = "P2O" if base_steps else ""
    figs.append(_plot(run / "reward.png", "Training reward", "mean reward",
                      [(label, *_series(steps, "reward_mean")), ("baseline", *_series(base_steps, "reward_mean"))]))
    figs.append(_plot(run / "hard_samples.png", "Hard samples per epoch", "count",
                      [("", [e["epoch"] for e in epochs], [e.get("hard_count", 0) for e in epochs])], xlabel="epoch"))
    figs.append(_plot(run / "template_success.png", "Success on hard samples: templated vs plain prompt", "success rate",
                      [("templated rollouts", *_series(steps, "templated_success")),
                       ("plain prompt", *_series(steps, "untemplated_success"))]))
    figs.append(_plot(run / "masks.png", "Zero-advantage groups and context-ratio mask", "fraction",
                      [("zero-advantage groups", *_series(steps, "zero_adv_frac")),
                       ("masked tokens (templated rows)", *_series(steps, "mask_rate"))]))
    if any("heldout_greedy" in e for e in epochs):
        figs.append(_plot(run / "heldout.png", "Held-out accuracy (no templates)", "accuracy",
                          [(label, [e["epoch"] for e in epochs if key in e], [e[key] for e in epochs if key in e])
                           for label, key in (("greedy", "heldout_greedy"), ("sampled (avg@4)", "heldout_avg4"))],
                          xlabel="epoch"))
    figs.append(_time_breakdown(run / "time_breakdown.png", steps))
    imgs = "".join(f'<img src="{f}" alt="{f}">' for f in figs if f)
    config = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else ""
    per_epoch, per_template = template_tables(_read_rollouts(run, steps), epochs)
    summary = {}
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>P2O run report: {html.escape(run.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}img{{margin:6px;border:1px solid #ddd}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 8px}}pre{{background:#f6f6f6;padding:1em}}</style>
</head><body><h1>P2O run report: {html.escape(run.name)}</h1>
<h2>Summary</h2>{_table([summary], list(summary)) if summary else "<p><i>run not finished</i></p>"}
<h2>Plots</h2>{imgs}
<h2>Epochs</h2>{_table(epochs, sorted({k for e in epochs for k in e if k not in ("kind", "time")}))}
<h2>GEPA rounds</h2>{_table(gepa, sorted({k for g in gepa for k in g if k not in ("kind", "time")}))}
<h2>Templated rollouts on hard samples</h2>
<p>Success of the rollouts generated with templates (x+z), next to the same problems' success with the plain
prompt x: before, their rollouts one epoch earlier, when they were mined as hard (sampled at the rollout
temperature); after, an evaluation at the end of the templated epoch, once context distillation trained on them
(greedy, and 4 samples at the rollout temperature; <code>plain_after_*</code>).</p>{_table(per_epoch, list(per_epoch[0]) if per_epoch else [])}
<h2>Templates used</h2>{_table(per_template, ["template", "rollouts", "problems", "correct", "success"])}
<h2>Config</h2><pre>{html.escape(config)}</pre></body></html>"""
    out = run / "report.html"
    atomic_write_text(out, page)
    return out
