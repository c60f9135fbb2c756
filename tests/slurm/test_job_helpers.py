"""The job scripts' shell helpers (slurm/lib/*.sh), called through bash: URL discovery, the health
probe against a real HTTP server, the token file, JSON quoting, the TP x PP layout check and the
trainer launch line. No Slurm needed."""
from __future__ import annotations

import http.server
import json
import os
import stat
import subprocess
import threading

import pytest

from tests.slurm.conftest import REPO

LIB = REPO / "slurm" / "lib"


def bash(snippet: str, **env: str) -> subprocess.CompletedProcess:
    prelude = f"source {LIB}/common.sh; source {LIB}/endpoints.sh; source {LIB}/launch.sh; "
    return subprocess.run(["bash", "-c", prelude + snippet], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **env})


@pytest.mark.parametrize("published, expected", [
    ("0.0.0.0:8123", "http://gepa-node:8123"),
    ("http://0.0.0.0:8123", "http://gepa-node:8123"),
    ("http://cpu17:8123", "http://cpu17:8123"),
    ("cpu17:8123", "http://cpu17:8123"),
])
def test_fix_url_makes_endpoints_reachable(published, expected):
    assert bash(f"fix_url '{published}' gepa-node").stdout.strip() == expected


def test_json_str_round_trips_awkward_text():
    text = 'a "quoted" \\ back\tslash\nnew line'
    out = bash('json_str "$TEXT"', TEXT=text)
    assert json.loads(out.stdout) == text


def test_token_file_is_private_and_stable(tmp_path):
    token_file = tmp_path / "token"
    first = bash(f"ensure_token {token_file}").stdout
    second = bash(f"ensure_token {token_file}").stdout
    assert len(first) == 64 and int(first, 16) >= 0
    assert first == second
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


@pytest.mark.network
def test_http_ok_probes_a_real_server():
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert bash(f"http_ok http://127.0.0.1:{port}/health").returncode == 0
        assert bash(f"http_ok http://127.0.0.1:{port}/missing").returncode != 0
    finally:
        server.shutdown()
    assert bash(f"http_ok http://127.0.0.1:{port}/health").returncode != 0


def test_layout_check_names_the_parallel_keys():
    ok = bash("check_layout 2 8 2 2")
    assert ok.returncode == 0 and "dp 4" in ok.stdout
    bad = bash("check_layout 1 2 4 1")
    assert bad.returncode == 1
    assert "parallel.tp x parallel.pp = 4 x 1" in bad.stdout and "world size 2" in bad.stdout


def test_torchrun_launch_line_for_gpu_nodes():
    out = bash("trainer_srun_cmd 4 8 gpu01 23456 77-1 /run/pids -- train --config c.yaml | tr '\\0' '\\n'",
               PYTHON="/opt/venv/bin/python", LAUNCHER="torchrun", SLURM_HET_SIZE="2")
    args = out.stdout.split("\n")
    assert args[:2] == ["srun", "--het-group=0"]
    assert "--ntasks-per-node=1" in args and "--nodes=4" in args
    # Each task records its PID for rank-only signalling and ignores SIGUSR1 (P2O's ranks install a handler).
    assert any("trap \"\" USR1" in a for a in args) and "/run/pids" in args
    i = args.index("torch.distributed.run")
    assert args[i - 2:i] == ["/opt/venv/bin/python", "-m"]
    assert {"--nnodes=4", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu01:23456",
            "--rdzv-id=77-1"} <= set(args)
    assert args[args.index("-m", i) + 1:args.index("-m", i) + 5] == ["p2o.cli", "train", "--config", "c.yaml"]


def test_srun_launch_line_one_task_per_rank():
    out = bash("trainer_srun_cmd 2 4 gpu01 23456 77-0 /run/pids -- train | tr '\\0' '\\n'", LAUNCHER="srun")
    args = out.stdout.split("\n")
    assert "--ntasks-per-node=4" in args and "--ntasks=8" in args
    assert "torch.distributed.run" not in args
    assert any("RANK=$SLURM_PROCID" in a for a in args)
    assert bash("trainer_srun_cmd 1 1 h 1 x /run/pids -- train", LAUNCHER="mpirun").returncode == 1


def test_summary_reason_quotes_the_error_not_the_launcher_footer(tmp_path):
    log = tmp_path / "trainer.log"
    log.write_text("INFO starting\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "megatron_bridge.hf_io.CheckpointError: step_000002/policy: does not match this model\n"
                   "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
                   "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html\n"
                   "srun: error: vm-n1: task 0: Exited with exit code 1\n")
    quiet = tmp_path / "gepa.log"
    quiet.write_text("service on http://0.0.0.0:1234\n\nslurmstepd-n2: error: *** STEP 3.0 CANCELLED ***\n")
    out = subprocess.run(["bash", "-c", f"source {LIB}/common.sh; source {LIB}/supervise.sh; "
                          f"COMP_LOG[t]={log}; COMP_LOG[g]={quiet}; last_log_line t; echo; last_log_line g"],
                         capture_output=True, text=True, timeout=30).stdout.split("\n")
    assert out[0] == "megatron_bridge.hf_io.CheckpointError: step_000002/policy: does not match this model"
    assert out[1] == "service on http://0.0.0.0:1234"


@pytest.mark.parametrize("state, usr1, action", [
    ("CANCELLED", "USR1", "cancel"),      # scancel, even after a pre-emption warning
    ("CANCELLED", "", "cancel"),
    ("TIMEOUT", "USR1", "requeue_now"),   # the limit came before the trainer finished its checkpoint
    ("TIMEOUT", "", "requeue_now"),       # the USR1 was lost (e.g. sent while the trainer started)
    ("PREEMPTED", "", "requeue_now"),
    ("RUNNING", "USR1", "requeue"),       # a TERM for the batch script only, after the warning
    ("RUNNING", "", "cancel"),
    ("", "USR1", "requeue"),              # scontrol unreachable: the signal order decides
    ("", "", "cancel"),
])
def test_sigterm_after_sigusr1_requeues(state, usr1, action):
    out = subprocess.run(["bash", "-c", f"source {LIB}/common.sh; source {LIB}/supervise.sh; source {LIB}/job.sh; "
                          f"term_action '{state}' '{usr1}'"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == action, out.stderr


def test_compiler_caches_go_to_node_local_disk():
    show = "set_cache_env; echo $TRITON_CACHE_DIR $TORCHINDUCTOR_CACHE_DIR $VLLM_CACHE_ROOT"
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "VLLM_CACHE_ROOT", "SLURM_TMPDIR",
                        "P2O_CACHE_ROOT")}
    out = subprocess.run(["bash", "-c", f"source {LIB}/common.sh; {show}"], capture_output=True, text=True,
                         timeout=30, env={**env, "SLURM_JOB_ID": "42", "USER": "alice"}).stdout.split()
    assert out == ["/tmp/alice-42/triton", "/tmp/alice-42/inductor", "/tmp/alice-42/vllm"]
    out = subprocess.run(["bash", "-c", f"source {LIB}/common.sh; {show}"], capture_output=True, text=True,
                         timeout=30, env={**env, "SLURM_TMPDIR": "/local/job42", "TRITON_CACHE_DIR": "/mine"}).stdout
    assert out.split() == ["/mine", "/local/job42/inductor", "/local/job42/vllm"]  # a set variable is kept


def test_gepa_endpoint_flags_carry_a_key_variable_only_when_it_is_set():
    job = f"source {LIB}/job.sh; "
    out = bash(job + 'gepa_endpoint_args "http://n0:8001/v1" "http://n2:8000" GW_TOKEN', GW_TOKEN="t").stdout.split()
    assert out == ["--endpoint", "policy=http://n0:8001/v1", "--endpoint-key-env", "policy=GW_TOKEN",
                   "--endpoint", "reflection=http://n2:8000", "--endpoint-key-env", "reflection=GW_TOKEN"]
    out = bash(job + 'gepa_endpoint_args "" "http://n2:8000" GW_TOKEN', GW_TOKEN="").stdout.split()
    assert out == ["--endpoint", "reflection=http://n2:8000"]  # no key set: no key flag, no pinned policy port
    assert bash(job + 'gepa_endpoint_args "" "" ""').stdout == ""
