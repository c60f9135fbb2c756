"""The local test cluster itself: idempotent start, two idle nodes, a heterogeneous job with one
component per node and its exit code through `sbatch --wait`."""
from __future__ import annotations

import subprocess

import pytest

from tests.slurm.conftest import TESTING

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group(name="slurm")]


def test_start_again_is_a_no_op(local_slurm):
    again = subprocess.run(["bash", str(TESTING / "start_local_slurm.sh")], env=local_slurm.env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    states = local_slurm.run("sinfo", "-h", "-N", "-o", "%T").stdout.split()
    assert len(states) == 2 and all(s.rstrip("-*") in ("idle", "mixed", "allocated") for s in states), states


def test_hetjob_components_on_separate_nodes_and_exit_code(local_slurm, tmp_path):
    script = tmp_path / "het.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --nodes=1 --ntasks=1\n#SBATCH hetjob\n#SBATCH --nodes=1 --ntasks=1\n"
        "srun --het-group=0 bash -c 'echo c0=$SLURMD_NODENAME' &\n"
        "srun --het-group=1 bash -c 'echo c1=$SLURMD_NODENAME' &\n"
        "wait\nexit 3\n")
    out = tmp_path / "het.out"
    done = local_slurm.run("timeout", "60", "sbatch", "--wait", f"--output={out}", str(script), timeout=90)
    assert done.returncode == 3, done.stderr
    lines = dict(line.split("=", 1) for line in out.read_text().split() if line.startswith("c"))
    assert lines["c0"] != lines["c1"], lines
