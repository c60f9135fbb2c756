"""`p2o plan`: per-GPU memory and step time of every TP x PP x DP layout of a model on a cluster.

    p2o plan --model Qwen3-8B --nodes 2                       # ranked table, H100 80GB nodes of 8
    p2o plan --model path/to/config.json --nodes 1 --gpu-mem-gib 40 --no-fused-logprob --json

Every `Cluster` and `RunSettings` field is an option (`--prompts-per-step`, `--vllm-sleep-level`, ...).
Infeasible layouts are listed with their reasons (use --top to shorten the table).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys

from p2o.plan.layouts import GIB, Cluster, RunSettings
from p2o.plan.planner import PlanRow, plan, recommend
from p2o.plan.presets import PRESETS, PlanError, load_model_shape
from p2o.plan.throughput import resolve_vllm_tp


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each dataclass field (the project's config convention)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for prev, node in zip(body, body[1:], strict=False):
        if (isinstance(prev, ast.AnnAssign) and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            docs[prev.target.id] = node.value.value.strip()
    return docs


def _add_dataclass_options(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {f.default})".replace("%", "%%")
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=type(f.default), default=f.default, help=help_text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="Qwen3-8B",
                        help="preset (" + ", ".join(PRESETS) + ") or an HF model dir / config.json")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--top", type=int, default=0, help="show only the first N rows (0: all)")
    _add_dataclass_options(parser, Cluster, "cluster")
    _add_dataclass_options(parser, RunSettings, "run")


def _from_args(cls: type, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


COLUMNS = ("#", "layout", "peak GiB", "phase", "weights", "grads", "optim", "activ", "logits", "vllm",
           "gen s", "logp s", "upd s", "sync s", "gepa s", "step s", "tok/s/GPU", "status")


def table_rows(rows: list[PlanRow]) -> list[list[str]]:
    out = []
    for i, r in enumerate(rows, 1):
        m, t = r.memory, r.time
        out.append([str(i), r.layout.name, f"{m.peak / GIB:.1f}", m.peak_phase] +
                   [f"{v / GIB:.1f}" for v in (m.weights, m.gradients, m.optimizer, m.activations, m.logits,
                                                m.vllm_generation)] +
                   [f"{v:.1f}" for v in (t.generation_s, t.old_logprob_s, t.update_s, t.weight_sync_s,
                                          t.gepa_s, t.total_s)] +
                   [f"{t.tokens_per_s_per_gpu:.0f}", "ok" if r.feasible else "; ".join(r.layout.reasons)])
    return out


def format_table(rows: list[PlanRow]) -> str:
    body = table_rows(rows)
    widths = [max(len(c), *(len(row[i]) for row in body)) if body else len(c) for i, c in enumerate(COLUMNS)]
    widths[-1] = 0  # the status column is free text
    line = lambda cells: "  ".join(c.ljust(w) if i < len(cells) - 1 else c  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(list(COLUMNS))] + [line(row) for row in body])


def main(args: argparse.Namespace) -> int:
    try:
        shape = load_model_shape(args.model)
        cluster = _from_args(Cluster, args)
        run = _from_args(RunSettings, args)
        run = resolve_vllm_tp(shape, cluster, run)
        rows = plan(shape, cluster, run)
    except PlanError as e:
        print(f"p2o plan: {e}", file=sys.stderr)
        return 2
    shown = rows[: args.top] if args.top > 0 else rows
    best = recommend(shape, cluster, run)
    if args.json:
        print(json.dumps({"model": dataclasses.asdict(shape) | {"num_params": shape.num_params,
                                                                "num_active_params": shape.num_active_params},
                          "cluster": dataclasses.asdict(cluster), "run": dataclasses.asdict(run),
                          "recommended": best.as_dict() if best else None,
                          "layouts": [r.as_dict() for r in shown]}, indent=2))
        return 0
    feasible = sum(r.feasible for r in rows)
    print(f"{shape.name}: {shape.num_params / 1e9:.2f} B params ({shape.num_active_params / 1e9:.2f} B active); "
          f"{cluster.nodes} x {cluster.gpus_per_node} GPUs of {cluster.gpu_mem_gib:g} GiB; "
          f"{run.prompts_per_step} prompts x K={run.k}, {run.prompt_tokens}+{run.response_tokens} tokens; vLLM TP={run.vllm_tp}; "
          f"{feasible}/{len(rows)} layouts feasible. Predictions (docs/scaling.md), not measurements.")
    print(format_table(shown))
    if best is not None:
        print(f"recommended: {best.layout.name} (the simplest layout within 2% of the fastest predicted step)")
    return 0 if feasible else 1
