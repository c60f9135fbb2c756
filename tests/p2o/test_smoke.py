"""slurm/gpu_smoke.sh and its stages (p2o.smoke) on this machine: the script is valid bash (and clean under
shellcheck when installed), the CPU variants of the env, kernels and checkpoint stages pass, the CUDA-only stages
skip naming why, and a stage that fails or runs past its limit makes the script exit non-zero."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from p2o.smoke import STAGES, main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "gpu_smoke.sh"


def smoke(tmp_path: Path, timeout_s: float = 1200, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=timeout_s, cwd=tmp_path,
                          env={**os.environ, "PYTHON": sys.executable, "SMOKE_DIR": str(tmp_path / "smoke"), **env})


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", "-x", "-P", str(SCRIPT.parent), str(SCRIPT)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stdout


def test_stage_names(capsys):
    assert main(["list"]) == 0
    assert capsys.readouterr().out.split() == list(STAGES)
    with pytest.raises(SystemExit):
        main(["run", "warp-drive"])


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU variants")
def test_cpu_stages_pass_and_cuda_stages_skip(tmp_path):
    r = smoke(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = {m.group(2): m.group(1) for m in re.finditer(r"^(PASS|SKIP|FAIL) (\S+) ", r.stdout, flags=re.M)}
    assert lines == {"env": "PASS", "kernels": "PASS", "parity": "SKIP", "colocated": "SKIP",
                     "checkpoint": "PASS", "train-1gpu": "SKIP", "train-tp2": "SKIP"}, r.stdout
    assert "TP=2" in r.stdout and "identical after save/load/save" in r.stdout
    summary = (tmp_path / "smoke" / "summary.txt").read_text()
    assert "commit " in summary and "no stage failed" in summary
    assert (tmp_path / "smoke" / "env" / "doctor.json").is_file()


def test_a_stage_past_its_limit_fails_the_script(tmp_path):
    r = smoke(tmp_path, timeout_s=300, STAGES="kernels env", SMOKE_TIMEOUT_KERNELS="1", SMOKE_TIMEOUT_ENV="1")
    assert r.returncode == 1
    assert re.search(r"^FAIL kernels 1s timed out after 1 s", r.stdout, flags=re.M), r.stdout
    assert "FAILED (kernels env)" in r.stdout
