"""`p2o serve` as a process and `p2o bench rollout` end to end (tiny settings)."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.p2o.rollout.helpers import require_vllm

pytestmark = pytest.mark.network


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_p2o_serve_process(engine, tiny_model_dir, hd32_model_dir, repo_root):
    """`p2o serve` as a process, with either engine (vLLM in a one-rank world of its own)."""
    model = tiny_model_dir
    extra = []
    if engine == "vllm":
        require_vllm()
        model, extra = hd32_model_dir, ["rollout.engine=vllm", "rollout.vllm_kv_cache_bytes=67108864"]
    env = {**os.environ, "P2O_GATEWAY_TOKEN": ""}
    proc = subprocess.Popen([sys.executable, "-m", "p2o.cli", "serve", "--model", str(model), "--port", "0",
                             "--served-model-name", "tiny", "rollout.max_batch_size=4", *extra],
                            cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 300
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "p2o serve exited early"
            m = re.search(r"listening on (http://\S+)", line)
            url = m.group(1) if m else None
        assert url, "p2o serve did not report its address"
        assert httpx.get(url + "/health").json()["status"] == "ok"
        c = openai.OpenAI(base_url=url + "/v1", api_key="x")
        resp = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert resp.model == "tiny" and resp.usage.completion_tokens <= 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) is not None


def test_p2o_serve_reports_config_errors(capsys):
    from p2o.cli import main

    assert main(["serve", "--model", "tiny-qwen3", "rollout.device=tpu"]) == 2
    assert "rollout.device" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_rollout_writes_csv(tiny_model_dir, tmp_path):
    from p2o.cli import main

    out = tmp_path / "rollout.csv"
    assert main(["bench", "rollout", "--models", str(tiny_model_dir), "--batches", "1,2", "--max-new-tokens", "4",
                 "--repeats", "1", "--clients", "4", "--requests-per-client", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["mode"], r["metric"], r["x"]) for r in rows] == [
        ("engine", "tokens_per_s", "1"), ("engine", "tokens_per_s", "2"), ("gateway", "latency_p50_s", "4"),
        ("gateway", "latency_p99_s", "4"), ("gateway", "tokens_per_s", "4")]
    assert all(float(r["value"]) > 0 for r in rows)
    p50, p99 = (float(r["value"]) for r in rows[2:4])
    assert p50 <= p99


@pytest.mark.slow
@pytest.mark.multiproc
def test_bench_rollout_compares_hf_and_vllm(hd32_model_dir, tmp_path):
    """`p2o bench rollout --engines hf,vllm`: both engines on the run config's workload, every metric of each."""
    require_vllm()
    from p2o.cli import main

    out = tmp_path / "rollout.csv"
    sets = [f"model.path={hd32_model_dir}", "rollout.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=4",
            "rollout.vllm_kv_cache_bytes=67108864"]
    assert main(["bench", "rollout", "--engines", "hf,vllm", "--repeats", "1", "--out", str(out),
                 *[a for kv in sets for a in ("--set", kv)]]) == 0
    rows = list(csv.DictReader(out.open()))
    metrics = ["load_s", "sampled_tokens_per_s", "greedy_tokens_per_s", "ttft_s", "ttft_s", "weight_sync_s",
               "peak_rss_mb"]
    for engine in ("hf", "vllm"):
        mine = [r for r in rows if r["mode"] == engine]
        assert [r["metric"] for r in mine] == metrics and all(float(r["value"]) > 0 for r in mine)
        assert [r["x"] for r in mine if r["metric"] == "ttft_s"] == ["4", "1"]


@pytest.mark.slow
@pytest.mark.multiproc
def test_eval_with_vllm_in_a_world_of_its_own(hd32_policy_dir, repo_root, tmp_path):
    """`p2o eval --engine vllm` outside torchrun: the process forms its own one-rank world; its greedy answers are
    the HF engine's, and the verdicts follow the tiny policy's rule (\\boxed{3} without "carefully")."""
    require_vllm()
    import json

    from tests.p2o.gepa.tiny_policy import question

    src = tmp_path / "probe.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "question": question(i), "answer": a}) + "\n"
                           for i, a in enumerate(["3", "7", "3"])))
    runs = {}
    for engine in ("vllm", "hf"):
        out = tmp_path / engine
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        proc = subprocess.run([sys.executable, "-m", "p2o.cli", "eval", "--model", str(hd32_policy_dir),
                               "--engine", engine, "--file", f"probe={src}", "--sampled-below", "0",
                               "--max-new-tokens", "8", "--out", str(out), "--override", "reward.workers=1",
                               "rollout.vllm_kv_cache_bytes=67108864"],
                              cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "run.json").read_text())["engine"] == engine
        runs[engine] = [json.loads(x) for x in (out / "problems" / "probe.jsonl").read_text().splitlines()]
    assert [r["verdicts"] for r in runs["vllm"]] == [[True], [False], [True]]
    assert [r["responses"] for r in runs["vllm"]] == [r["responses"] for r in runs["hf"]]
