"""What every multi-run experiment shares: its problem files, its settings file, and its `p2o train` runs.

A study is a directory holding problems.jsonl / heldout.jsonl, a settings JSON (a rerun with other settings is
refused), one `p2o train` run directory per run (each with `checkpoint.resume=auto`, so a killed study resumes:
finished runs, summary.json status "ok", are skipped) and a log file per run.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from p2o.atomic import atomic_write_json

log = logging.getLogger(__name__)


def write_problem_files(out: Path, levels: list[int], num_problems: int, eval_size: int,
                        seed: int) -> tuple[Path, Path]:
    """problems.jsonl and heldout.jsonl in `out`: `levels` [] draws the binary a op b problems (the vs-TRL set),
    else `p2o.data.arithmetic.generate` at those levels. Held-out problems come from seed + 1000003, with the
    training questions and repeats removed."""
    from p2o.data.arithmetic import binary_problems, generate
    from p2o.data.loaders import write_jsonl

    def problems(n: int, seed: int, prefix: str):
        if levels:
            return generate(n, levels, seed=seed, id_prefix=prefix)
        return binary_problems(n, seed=seed, id_prefix=prefix)

    train = problems(num_problems, seed, "arith" if levels else "binop")
    seen = {p.question for p in train}
    heldout = []
    for p in problems(eval_size * 4 + 64, seed + 1_000_003, "heldout"):
        if p.question not in seen and len(heldout) < eval_size:
            heldout.append(p)
            seen.add(p.question)
    if len(heldout) < eval_size:
        raise ValueError(f"--eval-size {eval_size}: only {len(heldout)} held-out problems differ from training")
    write_jsonl(out / "problems.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)
    return out / "problems.jsonl", out / "heldout.jsonl"


def check_settings(path: Path, settings: Any, free: tuple[str, ...] = ()) -> None:
    """Write `settings` (a dataclass) to `path`, or refuse (ValueError) when `path` holds other settings.
    Keys in `free` may change between runs of the same study (e.g. adding arms or seeds); a key missing in the
    file (added to the dataclass later) compares with its default."""
    mine = asdict(settings)
    if path.is_file():
        theirs = json.loads(path.read_text())
        default = asdict(type(settings)())
        diff = sorted(k for k in mine if k not in free and theirs.get(k, default[k]) != mine[k])
        if diff:
            raise ValueError(f"{path}: the study there has other settings ({', '.join(diff)}); "
                             f"use another --out or the same options")
    atomic_write_json(path, mine, indent=2)


def run_finished(run_dir: Path) -> bool:
    """True when `run_dir` holds a finished `p2o train` run (summary.json with status "ok")."""
    p = run_dir / "summary.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("status") == "ok"
    except json.JSONDecodeError:
        return False


def run_train(config: str, overrides: list[str], log_path: Path) -> int:
    """Run (or resume) `p2o train --config config overrides...`, appending its output to `log_path`; returns
    its exit code. The run directory is the overrides' `logging.run_dir`."""
    cmd = [sys.executable, "-m", "p2o.cli", "train", "--config", config, *overrides]
    log.info("%s", " ".join(cmd))
    with log_path.open("a") as logf:
        logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: {' '.join(cmd)}\n")
        logf.flush()
        return subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT)


def load_records(run_dir: Path) -> list[dict]:
    """The run's metrics records ([] when it has none yet)."""
    from p2o.telemetry.metrics import read_metrics

    return list(read_metrics(run_dir)) if (run_dir / "metrics.jsonl").is_file() else []


def read_eval(run_dir: Path, name: str, epoch: int) -> dict[str, dict] | None:
    """Per-problem results of the trainer's `name` evaluation at the end of `epoch` (evals/, written by
    `RolloutService.evaluate_plain`): problem id -> {"greedy", "correct", "n"}; None when the file is absent."""
    from p2o.jsonl import read_jsonl

    p = run_dir / "evals" / f"{name}_epoch{epoch:03d}.jsonl"
    return {r["id"]: r for r in read_jsonl(p)} if p.is_file() else None

