"""Predicted vs measured: the planner's per-rank memory and per-step communication against a real step.

    python -m p2o.plan.validate --model tiny-qwen3 --layouts 1x1x1 2x1x1 1x2x1 1x1x2
    python -m p2o.plan.validate --model smollm2-135m --layouts 1x1x1 1x2x1 --markdown
    python -m p2o.plan.validate --model tiny-qwen3 --layouts 1x1x1 2x1x1 --policy   # MegatronPolicy.train_step

Each layout (TPxPPxDP) runs `p2o.plan.mcore_step.measure_rank` in TP x PP x DP spawned processes (gloo on
CPU), and each rank's measurement is compared with `p2o.plan.memory.stage_memory` (fp32, unfused attention,
unfused log-softmax: what the local-spec CPU step does) and `predict_comm_bytes`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from p2o.atomic import atomic_write_json
from p2o.plan.layouts import Cluster, Layout, RunSettings
from p2o.plan.memory import MemoryTerms, stage_memory
from p2o.plan.presets import ModelShape, load_model_shape

TERMS = ("weights", "gradients", "optimizer", "activations", "logits", "peak")
COMM = ("comm_tp", "comm_pp", "comm_dp")


@dataclass(frozen=True)
class StepSpec:
    """One measured configuration: layout, sequence length, micro-batch size and count, optimizer."""

    tp: int
    pp: int
    dp: int
    seq: int = 64
    micro_batch: int = 2
    micro_batches: int = 2
    distributed_optimizer: bool = False
    timed_steps: int = 0
    """Uninstrumented steps timed after the measured one (0: time the measured step)."""
    model_dir: str = ""
    """Set: measure `MegatronPolicy.train_step` on this HF model dir (the P2O backend) instead of the plain
    GPTModel step; rows of seq/2 prompt + seq/2 response tokens, `micro_batch` rows per micro-batch."""

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    def run_settings(self) -> RunSettings:
        """The planner's settings describing this CPU step (fp32, local attention, no fused kernel, no vLLM)."""
        return RunSettings(prompts_per_step=self.micro_batch * self.micro_batches * self.dp, k=1,
                           prompt_tokens=self.seq // 2, response_tokens=self.seq - self.seq // 2,
                           max_response_tokens=self.seq - self.seq // 2, micro_batch=self.micro_batch, recompute=False,
                           distributed_optimizer=self.distributed_optimizer, fused_logprob=False,
                           logits_path="gathered" if self.model_dir else "labels", dtype_bytes=4, flash_attention=False, fused_wgrad_and_adam=False,
                           overhead_gib=0.0,
                           colocated=True)


def predict_memory(shape: ModelShape, spec: StepSpec, pp_rank: int) -> MemoryTerms:
    layout = Layout(spec.tp, spec.pp, spec.dp)
    return stage_memory(shape, Cluster(gpus_per_node=max(8, spec.world)), layout, spec.run_settings(), pp_rank,
                        spec.micro_batches)


def predict_comm_bytes(shape: ModelShape, spec: StepSpec, pp_rank: int, vocab_multiple: int = 128) -> dict[str, float]:
    """Payload bytes one rank passes to TP / PP / DP collectives in one step (fp32, no sequence parallelism).

    TP, per micro-batch of T tokens: 2 all-reduces of [T, h] per layer forward (attention and MLP outputs)
    and 2 backward (QKV and fc1 input gradients); the embedding output (first stage) and the LM-head input
    gradient (last stage) one each; the vocab-parallel cross-entropy 3 of [T] (max, target logit, sum exp;
    the policy step takes it over the response tokens only).
    PP: per micro-batch, the activation [T, h] forward from every stage but the last and its gradient
    backward from every stage but the first. DP: the fp32 gradient buffer all-reduced, or reduce-scattered
    plus the parameters all-gathered under the distributed optimizer. Payload is what is passed to the
    collective: Megatron also calls the cross-entropy and gradient all-reduces over groups of one rank. Tied embeddings with PP > 1 add the
    embedding gradient all-reduce between the first and last stages (counted under "other" when measured).
    """
    b, h, t = 4, shape.hidden, spec.seq * spec.micro_batch
    first, last = pp_rank == 0, pp_rank == spec.pp - 1
    layers = shape.layers // spec.pp
    ce_tokens = (spec.seq - spec.seq // 2) * spec.micro_batch if spec.model_dir else t  # policy: response only
    tp = (3 * ce_tokens * 4 if last else 0) * spec.micro_batches  # Megatron calls these even when TP = 1
    if spec.tp > 1:
        tp += (4 * layers * t * h * b + (t * h * b if first else 0) + (t * h * b if last else 0)) * spec.micro_batches
    pp = 0.0
    if spec.pp > 1:
        pp = spec.micro_batches * t * h * b * ((0 if last else 1) + (0 if first else 1))
    grad_buffer = predict_memory(shape, spec, pp_rank).gradients  # all-reduced even over a DP group of one
    dp = grad_buffer * (2 if spec.distributed_optimizer else 1)
    return {"comm_tp": tp, "comm_pp": pp, "comm_dp": dp}


def _rank_main(rank: int, world: int, port: int, shape: ModelShape, spec: StepSpec, out_dir: str) -> None:
    from megatron_bridge.launch import rank_env

    os.environ.update(rank_env(rank, world, port))
    import torch
    import torch.distributed as dist

    from p2o.plan.mcore_step import measure_rank

    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group("nccl", rank=rank, world_size=world)
    else:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        if spec.model_dir:
            from p2o.plan.mcore_step import measure_policy_rank

            m = measure_policy_rank(spec.model_dir, spec.tp, spec.pp, spec.seq // 2, spec.seq - spec.seq // 2,
                                    spec.micro_batch * spec.micro_batches, spec.micro_batch,
                                    spec.distributed_optimizer)
        else:
            m = measure_rank(shape, spec.tp, spec.pp, spec.seq, spec.micro_batch, spec.micro_batches,
                             spec.distributed_optimizer, timed_steps=spec.timed_steps)
        atomic_write_json(Path(out_dir) / f"rank{rank}.json", m.as_dict())
    finally:
        dist.destroy_process_group()


def _start_method() -> str:
    """fork on a CPU-only Linux host (the ranks inherit the imported torch / Megatron modules: seconds saved per
    rank), spawn where CUDA may be used (a forked child cannot use a CUDA context)."""
    import torch

    if sys.platform.startswith("linux") and not torch.cuda.is_available():
        import megatron.core  # noqa: F401  (imported once here, inherited by every forked rank)

        return "fork"
    return "spawn"


def run_step(shape: ModelShape, spec: StepSpec) -> list[dict]:
    """Measurements of every rank of one spawned TP x PP x DP job (rank order; gloo on CPU, NCCL on GPUs)."""
    import torch.multiprocessing as mp

    from megatron_bridge.launch import host_store

    store = host_store(spec.world)  # the ranks join it as clients; alive until they have exited
    with tempfile.TemporaryDirectory(prefix="p2o-plan-") as out:
        mp.start_processes(_rank_main, args=(spec.world, store.port, shape, spec, out), nprocs=spec.world,
                           start_method=_start_method(), join=True)
        return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(spec.world)]


def compare(shape: ModelShape, spec: StepSpec, measured: list[dict]) -> list[dict]:
    """One row per rank: predicted and measured bytes per term and the relative error (pred/meas - 1)."""
    rows = []
    for m in measured:
        pred_mem = predict_memory(shape, spec, m["pp_rank"])
        # the policy step's "logits" are measured at the peak (the LM head's backward), weight gradient included
        logits = pred_mem.logits + (pred_mem.wgrad_temp if spec.model_dir and pred_mem.logits else 0.0)
        pred = {"weights": pred_mem.weights, "gradients": pred_mem.gradients, "optimizer": pred_mem.optimizer,
                "activations": pred_mem.activations, "logits": logits, "peak": pred_mem.peak_update}
        pred |= predict_comm_bytes(shape, spec, m["pp_rank"])
        backend = "MegatronPolicy" if spec.model_dir else "GPTModel"
        row = {"model": shape.name, "backend": backend, "layout": f"TP{spec.tp} PP{spec.pp} DP{spec.dp}", "rank": m["rank"],
               "pp_rank": m["pp_rank"], "step_s": m["step_s"], "comm_other": m["comm_other"]}
        for key, p in pred.items():
            row[f"pred_{key}"], row[f"meas_{key}"] = p, m[key]
            row[f"err_{key}"] = (p / m[key] - 1.0) if m[key] else (0.0 if p == 0 else float("inf"))
        rows.append(row)
    return rows


def parse_layout(text: str) -> tuple[int, int, int]:
    try:
        tp, pp, dp = (int(x) for x in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"layout {text!r}: expected TPxPPxDP, e.g. 2x1x1") from e
    return tp, pp, dp


def markdown(rows: list[dict]) -> str:
    """The validation table of docs/scaling.md: MiB predicted / measured (error) per term."""
    head = ["model", "step", "layout", "rank"] + list(TERMS) + list(COMM)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["backend"], r["layout"], str(r["rank"])]
        for key in TERMS + COMM:
            p, m, e = r[f"pred_{key}"], r[f"meas_{key}"], r[f"err_{key}"]
            if p == 0 and m == 0:
                cells.append("0")
            else:
                cells.append(f"{p / 2**20:.2f} / {m / 2**20:.2f} ({e:+.1%})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2o.plan.validate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-qwen3")
    parser.add_argument("--layouts", nargs="+", type=parse_layout, default=[(1, 1, 1)])
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--micro-batches", type=int, default=2)
    parser.add_argument("--distributed-optimizer", action="store_true")
    parser.add_argument("--policy", action="store_true",
                        help="measure MegatronPolicy.train_step (the P2O backend) on the embedded model's weights")
    parser.add_argument("--markdown", action="store_true", help="print the docs table")
    parser.add_argument("--json", default="", help="also write all rows to this JSON file")
    args = parser.parse_args(argv)
    shape = load_model_shape(args.model)
    model_dir = ""
    if args.policy:
        from p2o.models import resolve_model_dir

        model_dir = str(resolve_model_dir(args.model))
    rows = []
    for tp, pp, dp in args.layouts:
        spec = StepSpec(tp, pp, dp, args.seq, args.micro_batch, args.micro_batches, args.distributed_optimizer,
                        model_dir=model_dir)
        rows += compare(shape, spec, run_step(shape, spec))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.markdown:
        print(markdown(rows))
    else:
        for r in rows:
            print(r["layout"], "rank", r["rank"], "  ".join(
                f"{k}={r[f'pred_{k}'] / 2**20:.2f}/{r[f'meas_{k}'] / 2**20:.2f}MiB({r[f'err_{k}']:+.1%})"
                for k in TERMS + COMM))
    return 0


if __name__ == "__main__":
    sys.exit(main())
