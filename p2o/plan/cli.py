"""`p2o plan`: per-GPU memory and step time of every TP x PP x DP layout of a model on a cluster.

    p2o plan --model Qwen3-8B --nodes 2                       # ranked table, H100 80GB nodes of 8
    p2o plan --model path/to/config.json --nodes 1 --gpu-mem-gib 40 --no-fused-logprob --json
    p2o plan --config configs/scaling/qwen3_8b_p2o.yaml --nodes 2   # the run that config describes
    p2o plan --config configs/scaling/qwen3_32b_p2o.yaml            # a shipped GPU config: on its target nodes

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
from pathlib import Path

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
        # default None: an option not given falls back to --config, then to the dataclass default
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=type(f.default), default=None, help=help_text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="preset (" + ", ".join(PRESETS) + ") or an HF model dir / config.json "
                             "(default: the --config's model.path, else Qwen3-8B)")
    parser.add_argument("--config", default=None,
                        help="a run config YAML: its model, rollout, micro-batch, optimizer, kernel and vLLM settings "
                             "become the defaults, and its parallel.tp / pp layout is marked in the table")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--top", type=int, default=0, help="show only the first N rows (0: all)")
    _add_dataclass_options(parser, Cluster, "cluster")
    _add_dataclass_options(parser, RunSettings, "run")


def _from_args(cls: type, args: argparse.Namespace, base: dict | None = None):
    """`cls` from the options given, then `base` (from --config), then the dataclass defaults."""
    values = dict(base or {})
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None})
    return cls(**values)


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
    config_layout = None
    try:
        model, base = args.model, {}
        if args.config:
            from p2o.config import ConfigError, load_config
            from p2o.plan.from_config import settings_from_config

            try:
                config_model, base, config_layout = settings_from_config(load_config(args.config))
            except ConfigError as e:
                print(f"p2o plan: --config {args.config}: {e}", file=sys.stderr)
                return 2
            model = model or config_model
        try:
            shape = load_model_shape(model or "Qwen3-8B")
        except PlanError:
            if args.model or not args.config:
                raise
            # a config's checkpoint dir that is not on this machine: its name, e.g. models/Qwen3-8B -> Qwen3-8B
            shape = load_model_shape(Path(model).name)
        cluster_base = None
        if args.config:
            from p2o.plan.targets import target_of

            target = target_of(args.config)
            if target is not None:  # a shipped GPU config: its nodes (p2o.plan.targets), unless options say otherwise
                cluster_base = dataclasses.asdict(target.cluster())
                print(f"--config {args.config}: written for {target.nodes} node(s) of {target.node_type} "
                      "(p2o.plan.targets)", file=sys.stderr)
        cluster = _from_args(Cluster, args, cluster_base)
        run = _from_args(RunSettings, args, base)
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
    if config_layout is not None:
        mine = next((r for r in rows if (r.layout.tp, r.layout.pp) == config_layout), None)
        verdict = ("not a layout of this cluster" if mine is None else
                   f"{mine.layout.name}: " + ("ok, " if mine.feasible else "; ".join(mine.layout.reasons) + "; ") +
                   f"peak {mine.memory.peak / GIB:.1f} GiB, step {mine.time.total_s:.1f} s")
        print(f"--config layout (parallel.tp={config_layout[0]}, parallel.pp={config_layout[1]}): {verdict}")
    return 0 if feasible else 1
