"""Our side of `p2o bench vs-trl`: the real `Trainer` (Megatron-Core policy on gloo, the HF engine behind the
gateway, the verifier), one `train_step` per lock-step command, plain GRPO (p2o.enabled=false).

    python -m p2o.experiment.ours_side --problems F.jsonl --run-dir D [key=value ...]

Step I trains on problems [I * prompts_per_step, (I + 1) * prompts_per_step) of the file, in file order.
The step record carries the loop's own timings (generate, verify, old-logprob, update, weight-sync) and
`step_s`, the wall time of the whole `train_step` call.

Memory (docs/results.md section 1): the fused log-prob/loss path (`train.use_kernels=true`, the chunked torch
fallback on CPU: no [T, V] logits), the engine adopting the policy's weights (`rollout.share_weights`, bound
once before the first step by an initial weight sync, so the engine's own copy is never paged in) and
activation recomputation (`train.recompute`, set by `p2o bench vs-trl` on every side). The glibc malloc mode
(`train.malloc`, the same on every side) is applied before anything large is allocated.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from contextlib import nullcontext

from megatron_bridge.launch import single_rank_world
from p2o.experiment.lockstep import commands, emit

log = logging.getLogger(__name__)

# The identical-work setting (see p2o.experiment.vs_trl); later overrides on the command line win.
BENCH_OVERRIDES = [
    "p2o.enabled=false", "rollout.n=4", "rollout.prompts_per_step=8", "rollout.max_new_tokens=64",
    "rollout.temperature=1.0", "rollout.top_p=1.0", "rollout.top_k=0", "rollout.max_batch_size=32",
    "optim.lr=1e-6", "grpo.kl_coef=0.0", "grpo.ppo_minibatches=1", "grpo.ppo_epochs=1",
    "grpo.micro_batch_size=8", "data.id_key=id", "data.eval_source=''", "checkpoint.resume=none",
    "logging.progress=false", "logging.save_rollouts=false", "train.epochs=1", "train.use_kernels=true",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2o.experiment.ours_side")
    parser.add_argument("--problems", required=True, help="jsonl of the benchmark problems (fields id/question/answer)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.skip_zero_advantage_rows=false")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from p2o.config import load_config
    from p2o.train.malloc import apply_malloc_mode

    cfg = load_config(None, BENCH_OVERRIDES + [f"data.source={args.problems}", f"logging.run_dir={args.run_dir}"]
                      + list(args.overrides))
    apply_malloc_mode(cfg.train.malloc)
    with nullcontext() if "RANK" in os.environ else single_rank_world():
        return _serve(cfg)


def _serve(cfg) -> int:
    """Build the trainer and run one step per lockstep command until the driver closes stdin."""
    from p2o.train.loop import Trainer
    from p2o.train.runtime import build_runtime

    t0 = time.perf_counter()
    rt = build_runtime(cfg)
    try:
        trainer = Trainer(cfg, rt)
        if cfg.rollout.share_weights:
            trainer.rollout.sync_weights(trainer.state.policy_version)  # the engine adopts the policy's weights now
        k = cfg.rollout.prompts_per_step
        emit({"event": "ready", "side": "ours", "load_s": time.perf_counter() - t0})
        for i in commands():
            batch = trainer.problems[i * k:(i + 1) * k]
            if len(batch) < k:
                raise ValueError(f"step {i}: the problems file has {len(trainer.problems)} problems; "
                                 f"step {i} needs {(i + 1) * k}")
            t = time.perf_counter()
            m = trainer.train_step(batch)
            step_s = time.perf_counter() - t
            emit({"event": "step", "side": "ours", "step": i, "step_s": step_s,
                  "generate_s": m["time_generate_s"], "verify_s": m["time_verify_s"],
                  "old_logprob_s": m["time_old_logprob_s"], "update_s": m["time_update_s"],
                  "weight_sync_s": m["time_weight_sync_s"], "completion_tokens": m["gen_tokens"],
                  "reward_mean": m["reward_mean"], "zero_adv_frac": m["zero_adv_frac"],
                  "skipped_rows": m["skipped_rows"], "optimizer_steps": m["optimizer_steps"]})
    finally:
        rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
