"""`p2o train --config X.yaml [key=value ...]`: run P2O (or plain GRPO with p2o.enabled=false).

`--dry-run` runs every validation, resolves the derived limits, prints the plan (components, limits, budgets,
GEPA calls) and exits 0 / 2 without loading a model or starting torch.distributed (`p2o.dry_run`).

When the layout needs several processes (parallel.tp x parallel.pp, or train.nproc) and the command is not
already running under torchrun, it relaunches itself with `torch.distributed.run --standalone`.
Exit codes: 0 done, 2 bad config, 75 checkpointed after SIGUSR1/SIGTERM (requeue and run again with
checkpoint.resume=auto), 1 failure. The run directory gets summary.json and report.html at the end.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from p2o.atomic import atomic_write_json

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (configs/*.yaml)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate, resolve the derived limits, print the plan and exit (0 ok, 2 bad config)")
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show third-party set-up logs and warnings (same as `p2o --verbose train`)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. rollout.n=8 parallel.tp=2")


def _write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write_json(run_dir / "summary.json", summary, indent=2)


def preflight(cfg) -> str | None:
    """What stops the run before anything is built: an unusable logging.run_dir or checkpoint.resume."""
    from p2o.train.checkpoint import CheckpointError, resume_candidates

    run_dir = Path(cfg.logging.run_dir).expanduser()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return f"logging.run_dir: cannot create or write {str(run_dir)!r} ({e.strerror or type(e).__name__})"
    try:
        resume_candidates(cfg.checkpoint.resume, run_dir)
    except CheckpointError as e:
        return str(e)
    return None


def main(args: argparse.Namespace) -> int:
    from p2o.config import ConfigError, load_config

    if args.dry_run:
        from p2o.dry_run import dry_run
        return dry_run(args.config, list(args.overrides))
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"p2o train: {e}", file=sys.stderr)
        return 2
    problem = preflight(cfg)
    if problem:
        print(f"p2o train: {problem}", file=sys.stderr)
        return 2
    nproc = cfg.train.nproc or cfg.parallel.tp * cfg.parallel.pp
    if nproc > 1 and "RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "p2o.cli", "train"] + (["--config", args.config] if args.config else []) + list(args.overrides)
        log.info("launching %d processes: %s", nproc, " ".join(cmd))
        return _launch(cmd, Path(cfg.logging.run_dir))
    if "RANK" not in os.environ:  # a single process: a one-rank gloo/nccl group on a local store
        from megatron_bridge.launch import single_rank_world

        with single_rank_world():
            return run(cfg)
    return run(cfg)


def _launch(cmd: list[str], run_dir: Path) -> int:
    """Run torchrun; forward SIGUSR1/SIGTERM to the ranks (torchrun does not forward USR1) and map a
    checkpointed stop back to the requeue exit code (torchrun reports any non-zero rank as 1)."""
    import signal

    import psutil

    from p2o.train.loop import REQUEUE_EXIT_CODE

    proc = subprocess.Popen(cmd)

    def forward(signum, _frame):
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                child.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    summary = run_dir / "summary.json"
    if code != 0 and summary.is_file() and json.loads(summary.read_text()).get("status") == "preempted":
        return REQUEUE_EXIT_CODE
    return code


def run(cfg) -> int:
    """Build, resume if possible, train, write the summary and the report. Returns the exit code."""
    from p2o.train.checkpoint import export_at_run_end
    from p2o.train.loop import REQUEUE_EXIT_CODE, Preempted, Trainer
    from p2o.train.malloc import apply_malloc_mode
    from p2o.train.runtime import build_runtime

    run_dir = Path(cfg.logging.run_dir)
    t0 = time.time()
    rt = None
    try:
        apply_malloc_mode(cfg.train.malloc)  # before the big allocations
        rt = build_runtime(cfg)
        trainer = Trainer(cfg, rt)
        trainer.install_signal_handlers()
        resumed = trainer.resume()  # a resume syncs the engine to the restored weights
        if not resumed and cfg.rollout.share_weights and cfg.rollout.engine == "hf":
            trainer.rollout.sync_weights(trainer.state.policy_version)  # the engine adopts the policy's weights before step 1
        summary = trainer.fit()
        export_at_run_end(cfg, rt)  # checkpoint.export_hf: run_dir/hf_export/
        summary["resumed"] = resumed
        code = 0
    except Preempted:
        summary, code = {"status": "preempted", "wall_s": round(time.time() - t0, 2)}, REQUEUE_EXIT_CODE
    except Exception as e:
        summary = {"status": "failed", "error": f"{type(e).__name__}: {e}", "wall_s": round(time.time() - t0, 2)}
        log.error("training failed:\n%s", traceback.format_exc())
        code = 1
    finally:
        if rt is not None:
            rt.close()
    if rt is None or rt.control.is_rank0:
        _write_summary(run_dir, summary)
        if (run_dir / "metrics.jsonl").is_file():
            from p2o.telemetry.report import write_report
            print(f"report: {write_report(run_dir)}")
        print(f"run directory: {run_dir} ({summary['status']})")
    return code
