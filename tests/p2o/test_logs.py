"""Readable logs: third-party set-up noise is quiet by default and back with --verbose; progress bars only on a
terminal."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2o.cli import build_parser

REPO = Path(__file__).resolve().parents[2]

# What a default run must not print, and what --verbose brings back (the libraries' own words).
NOISE = ("Params for bucket",                                   # Megatron's gradient-bucket listing
         "Transformer Engine and Apex are not installed",        # Megatron's fallback warnings
         "Setting up optimizer with config",                     # Megatron INFO set-up records
         "step 1 generate:")                                     # a tqdm frame in a non-terminal log


def _train(run_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("P2O_VERBOSE", "VLLM_LOGGING_LEVEL",
                                                             "HF_HUB_DISABLE_PROGRESS_BARS")}
    cmd = [sys.executable, "-m", "p2o.cli", "train", *flags, "--config", "configs/demo_cpu.yaml",
           "model.path=tiny-qwen3", "p2o.enabled=false", "rollout.max_new_tokens=8", "train.steps_per_epoch=1",
           "train.epochs=1", "data.eval_size=2", "checkpoint.resume=none", f"logging.run_dir={run_dir}"]
    # stdout/stderr are pipes: not a terminal, as in a Slurm log or `make demo > log`
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_a_default_run_is_quiet_and_verbose_brings_the_noise_back(tmp_path):
    quiet = _train(tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    out = quiet.stdout + quiet.stderr
    assert [n for n in NOISE if n in out] == [], out[-3000:]
    assert "step 1:" in out and "reward_mean" in out  # P2O's own progress lines stay
    assert "Loading weights" not in out  # transformers' bar

    loud = _train(tmp_path / "loud", "--verbose")
    assert loud.returncode == 0, loud.stderr[-3000:]
    out = loud.stdout + loud.stderr
    assert [n for n in NOISE if n not in out] == [], out[-3000:]


def test_verbose_is_accepted_before_and_after_the_command():
    assert build_parser("train").parse_args(["--verbose", "train", "--config", "c.yaml"]).verbose is True
    args = build_parser("train").parse_args(["train", "--verbose", "--config", "c.yaml", "rollout.n=2"])
    assert args.verbose is True and args.overrides == ["rollout.n=2"]
    assert build_parser("train").parse_args(["train", "--config", "c.yaml"]).verbose is False


def test_progress_bars_need_a_terminal(monkeypatch):
    import io

    from p2o.logs import progress_enabled
    from p2o.telemetry.progress import make_bar

    monkeypatch.delenv("P2O_VERBOSE", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_enabled(True) is False and make_bar("x", 3).disable

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_enabled(True) is True and progress_enabled(False) is False
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv("P2O_VERBOSE", "1")
    assert progress_enabled(True) is True


def test_known_vllm_warnings_are_dropped_and_others_kept(caplog, monkeypatch):
    import logging

    from p2o.logs import QUIET_ENV, configure_logging

    for key in (*QUIET_ENV, "HF_HUB_DISABLE_PROGRESS_BARS", "P2O_VERBOSE"):  # restored after the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    configure_logging()
    layerwise = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    with caplog.at_level(logging.WARNING):
        for cls in ("RotaryEmbedding", "Llama3RotaryEmbedding", "ParallelLMHead", "QKVParallelLinear"):
            layerwise.warning("%s: Failed to load weights", cls)
        logging.getLogger("vllm.v1.worker.cpu_worker").warning("libtcmalloc is not found in LD_PRELOAD.")
    assert [r.getMessage() for r in caplog.records] == ["QKVParallelLinear: Failed to load weights",
                                                         "libtcmalloc is not found in LD_PRELOAD."]
