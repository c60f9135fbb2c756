"""The cluster scaling sweep's Python half (the shell half is slurm/scaling_sweep.sh).

    python -m p2o.plan.sweep layouts --model Qwen3-8B --nodes 1 2 4 8 --top 1      # TSV, one job per line
    python -m p2o.plan.sweep collect runs/scaling_sweep/<stamp>/manifest.tsv --out sweep.csv

`layouts` prints the planner's recommended layout (or the `--top` fastest feasible ones) per node count,
with its predictions, as tab-separated lines the submit loop reads. `collect` reads every run's
`metrics.jsonl` (step records; the first `--skip` steps are warm-up) and writes one CSV row per run with
the measured step-time breakdown, tokens/s/GPU and peak GPU memory next to the planner's predictions.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

from p2o.atomic import atomic_write
from p2o.plan.layouts import GIB, Cluster, RunSettings
from p2o.plan.planner import plan, recommend
from p2o.plan.presets import PlanError, load_model_shape
from p2o.plan.throughput import resolve_vllm_tp

MANIFEST_FIELDS = ("name", "model", "nodes", "tp", "pp", "dp", "vllm_tp", "pred_step_s", "pred_generation_s",
                   "pred_old_logprob_s", "pred_update_s", "pred_weight_sync_s", "pred_tokens_per_s_per_gpu",
                   "pred_peak_gib")
TIME_KEYS = ("time_generate_s", "time_verify_s", "time_old_logprob_s", "time_update_s", "time_weight_sync_s",
             "time_step_s")
CSV_FIELDS = MANIFEST_FIELDS + ("run_dir", "steps") + TIME_KEYS + (
    "gen_tokens_per_step", "gen_tokens_per_s_per_gpu", "peak_gpu_mem_gib", "status")


def layout_lines(model: str, nodes: list[int], top: int, run: RunSettings, cluster_kw: dict) -> list[dict]:
    """Manifest rows (without run_dir) of the layouts to run for each node count."""
    shape = load_model_shape(model)
    out = []
    for n in nodes:
        cluster = Cluster(nodes=n, **cluster_kw)
        r = resolve_vllm_tp(shape, cluster, run)
        rows = [x for x in plan(shape, cluster, r) if x.feasible][:top] if top > 1 else [recommend(shape, cluster, r)]
        for row in rows:
            if row is None:
                print(f"# {shape.name} on {n} node(s): no feasible layout", file=sys.stderr)
                continue
            L, t = row.layout, row.time
            out.append(dict(name=f"{shape.name}-n{n}-tp{L.tp}-pp{L.pp}", model=shape.name, nodes=n, tp=L.tp, pp=L.pp,
                            dp=L.dp, vllm_tp=r.vllm_tp, pred_step_s=round(t.total_s, 2),
                            pred_generation_s=round(t.generation_s, 2), pred_old_logprob_s=round(t.old_logprob_s, 2),
                            pred_update_s=round(t.update_s, 2), pred_weight_sync_s=round(t.weight_sync_s, 3),
                            pred_tokens_per_s_per_gpu=round(t.tokens_per_s_per_gpu, 1),
                            pred_peak_gib=round(row.memory.peak / GIB, 2)))
    return out


def summarize_run(run_dir: Path, gpus: int, skip: int) -> dict:
    """Mean step-time breakdown, generated tokens/s/GPU and peak GPU memory of a run's step records."""
    from p2o.telemetry.metrics import read_metrics

    if not (run_dir / "metrics.jsonl").is_file():
        return {"status": "no metrics.jsonl", "steps": 0}
    steps = list(read_metrics(run_dir, kind="step"))[skip:]
    if not steps:
        return {"status": f"fewer than {skip + 1} steps", "steps": 0}
    out: dict = {"steps": len(steps), "status": "ok"}
    for key in TIME_KEYS:
        values = [s[key] for s in steps if isinstance(s.get(key), int | float)]
        out[key] = round(statistics.fmean(values), 3) if values else ""
    gen = [s["gen_tokens"] for s in steps if isinstance(s.get("gen_tokens"), int | float)]
    if gen and out["time_step_s"]:
        out["gen_tokens_per_step"] = round(statistics.fmean(gen), 1)
        out["gen_tokens_per_s_per_gpu"] = round(statistics.fmean(gen) / out["time_step_s"] / gpus, 1)
    mem = [v for s in steps for k, v in s.items() if k.endswith("/mem_used_gib") and isinstance(v, int | float)]
    out["peak_gpu_mem_gib"] = round(max(mem), 2) if mem else ""
    return out


def collect(manifest: Path, out: Path, gpus_per_node: int, skip: int) -> list[dict]:
    """One CSV row per manifest line (written atomically to `out`)."""
    with manifest.open() as f:
        jobs = list(csv.DictReader(f, delimiter="\t"))
    rows = []
    for job in jobs:
        run_dir = Path(job["run_dir"])
        if not run_dir.is_absolute():
            run_dir = manifest.parent / run_dir
        gpus = int(job["nodes"]) * gpus_per_node
        rows.append({**job, **summarize_run(run_dir, gpus, skip)})
    with atomic_write(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2o.plan.sweep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("layouts", help="TSV manifest lines of the layouts to run")
    p.add_argument("--model", required=True)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--top", type=int, default=1, help="1: the recommended layout; N: the N fastest feasible")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu-mem-gib", type=float, default=80.0)
    p.add_argument("--header", action="store_true", help="print the TSV header first")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--response-tokens", type=int, default=3072)
    p.add_argument("--max-response-tokens", type=int, default=12288)
    p.add_argument("--vllm-gpu-memory-fraction", type=float, default=None,
                   help="default: the --config's rollout.vllm_gpu_memory_utilization, else 0.4")
    p.add_argument("--config", default=None,
                   help="a run config (configs/scaling/*.yaml): its micro-batch, recompute, kernel, optimizer and vLLM "
                        "settings are planned (the length options above still apply; vLLM TP is the planner's)")
    c = sub.add_parser("collect", help="one CSV row per run of a sweep manifest")
    c.add_argument("manifest", type=Path)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--gpus-per-node", type=int, default=8)
    c.add_argument("--skip", type=int, default=1, help="warm-up steps left out of the means")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "layouts":
            base = {"micro_batch": 1, "recompute": True, "vllm_gpu_memory_fraction": 0.4}
            if args.config:
                from p2o.config import load_config
                from p2o.plan.from_config import settings_from_config

                base = settings_from_config(load_config(args.config))[1] | {"vllm_tp": 0}
            if args.vllm_gpu_memory_fraction is not None:
                base["vllm_gpu_memory_fraction"] = args.vllm_gpu_memory_fraction
            run = RunSettings(**(base | dict(prompt_tokens=args.prompt_tokens, response_tokens=args.response_tokens,
                                             max_response_tokens=args.max_response_tokens)))
            rows = layout_lines(args.model, args.nodes, args.top, run,
                                {"gpus_per_node": args.gpus_per_node, "gpu_mem_gib": args.gpu_mem_gib})
            if args.header:
                print("\t".join(MANIFEST_FIELDS))
            for r in rows:
                print("\t".join(str(r[k]) for k in MANIFEST_FIELDS))
            return 0
        rows = collect(args.manifest, args.out, args.gpus_per_node, args.skip)
        print(f"{len(rows)} runs -> {args.out} ({sum(r['status'] == 'ok' for r in rows)} with step metrics)")
        return 0
    except (PlanError, OSError, KeyError, ValueError) as e:
        print(f"p2o.plan.sweep: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
