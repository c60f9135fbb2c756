"""P2O end to end on CPU: Megatron-Core TP=2 over gloo, the HF engine behind the HTTP gateway, the GEPA
service as its own process, the verifier, two epochs, and a SIGKILL + resume.

The policy is the tiny Qwen3 fine-tuned (tests/p2o/gepa/tiny_policy.py) to answer \\boxed{7} when the user
turn contains "carefully" and \\boxed{3} otherwise. Problems with gold answer 7 are therefore hard without
a template; the reflection endpoint (a scripted stand-in: no reflection LLM at this scale writes useful
templates) proposes "Work carefully ...", GEPA's candidate scoring through the real gateway accepts it,
and the next epoch rolls exactly the hard problems out with it and trains on the original prompts.
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

from tests.p2o.gepa.fake_servers import _Server, chat_response
from tests.p2o.gepa.tiny_policy import question, train_tiny_policy

pytestmark = [pytest.mark.slow, pytest.mark.multiproc, pytest.mark.network]

HARD, EASY = ["h0", "h1", "h2", "h3"], ["e0", "e1", "e2", "e3"]
COMPARED = ("reward_mean", "hard_count", "templated_share", "templated_success", "mask_rate", "zero_adv_frac",
            "loss", "grad_norm", "gen_tokens", "optimizer_steps")


class FakeTeacher(_Server):
    """A scripted Teacher-Ref endpoint: always proposes the same instruction in a fenced block."""

    def __init__(self):
        super().__init__(lambda body: (200, chat_response("New instruction:\n```\nWork carefully, then box the value.\n```",
                                                           body["model"])))


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("p2o_e2e")
    policy_dir = train_tiny_policy(Path(tiny_model_dir), root / "policy", steps=300)
    data = root / "problems.jsonl"
    rows = [{"id": pid, "question": question(i), "answer": "7" if pid in HARD else "3"}
            for i, pid in enumerate(HARD + EASY)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = FakeTeacher().start()
    yield root, policy_dir, data, teacher
    teacher.stop()


def _command(setting, run_dir: Path) -> list[str]:
    root, policy_dir, data, teacher = setting
    return [sys.executable, "-m", "p2o.cli", "train", "--config", "configs/demo_cpu.yaml",
            f"model.path={policy_dir}", "parallel.tp=2", f"data.source={data}", "data.id_key=id",
            "data.eval_source=''", "rollout.n=4", "rollout.prompts_per_step=4", "rollout.max_new_tokens=8",
            "rollout.max_batch_size=16", "p2o.min_hard=2", "p2o.leave_one_untemplated=true",
            "gepa.dev_size=2", "gepa.num_parents=1", "gepa.minibatch_size=1", "gepa.budget_metric_calls=12",
            "gepa.eval_max_tokens=8", "reflection.mode=teacher", f"reflection.base_url={teacher.url}/v1",
            "reflection.model=teacher", "reflection.max_tokens=64", "optim.lr=1e-7", "train.epochs=2",
            "train.steps_per_epoch=2", "logging.progress=false", f"logging.run_dir={run_dir}"]


def _steps(run_dir: Path) -> list[dict]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == "step"]


def _run(setting, run_dir: Path, timeout_s: int = 420) -> subprocess.CompletedProcess:
    return subprocess.run(_command(setting, run_dir), capture_output=True, text=True, timeout=timeout_s,
                          cwd=Path(__file__).resolve().parents[3])


def test_two_epochs_with_gepa_templates_and_distillation(setting, tmp_path):
    run = tmp_path / "run"
    r = _run(setting, run)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in recs if x["kind"] == "epoch"]
    gepa = [x for x in recs if x["kind"] == "gepa"]
    # hard samples mined in epoch 0: exactly the problems whose answer needs the template
    assert epochs[0]["hard_count"] == len(HARD) and epochs[0]["gepa_submitted"] == 1
    # the GEPA job finished and assigned templates to the hard samples
    assert len(gepa) == 1 and gepa[0]["assigned"] == len(HARD) and not gepa[0].get("failed")
    # templates attached to exactly the hard samples in epoch 1, never in epoch 0
    rollouts = {int(p.stem.split("_")[1]): [json.loads(x) for x in p.read_text().splitlines()]
                for p in (run / "rollouts").glob("step_*.jsonl")}
    assert all(not x["template"] for s in (1, 2) for x in rollouts[s])
    for s in (3, 4):
        templated = {x["problem_id"] for x in rollouts[s] if x["template"]}
        batch_hard = {x["problem_id"] for x in rollouts[s]} & set(HARD)
        assert templated == batch_hard
        for x in rollouts[s]:
            if x["template"]:
                assert "carefully" in x["template"] and x["reward"] == 1.0
    # the context ratio mask was applied: under x the policy would not say 7, so templated tokens are masked
    steps = _steps(run)
    assert any(s.get("mask_rate", 0) > 0 for s in steps[2:])
    assert all(s.get("mask_rate") is None for s in steps[:2])
    # at the end of the templated epoch the same hard problems are evaluated with the plain prompt x: the policy
    # still answers 3 there (lr 1e-7), so greedy plain success stays 0; none in epoch 0 (no templates yet)
    assert "hard_plain_size" not in epochs[0]
    assert (epochs[1]["hard_plain_size"], epochs[1]["hard_plain_greedy"]) == (len(HARD), 0.0)
    after = [json.loads(x) for x in (run / "evals" / "hard_plain_epoch001.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in after) == HARD and all(x["greedy"] == 0 for x in after)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and "plain_after_greedy" in (run / "report.html").read_text()


def test_resume_after_kill_reproduces_metrics(setting, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _run(setting, full).returncode == 0
    proc = subprocess.Popen(_command(setting, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=Path(__file__).resolve().parents[3])
    marker = killed / "checkpoints" / "step_000002" / "COMPLETE"
    deadline = time.time() + 300
    while not marker.is_file():
        assert proc.poll() is None and time.time() < deadline, "no epoch-0 checkpoint before the run ended"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # trainer ranks, launcher and GEPA service, mid-epoch 1
    proc.wait()
    r = _run(setting, killed)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((killed / "summary.json").read_text())["resumed"] is True
    a, b = _steps(full), _steps(killed)
    assert [s["step"] for s in b] == [1, 2, 3, 4]
    for sa, sb in zip(a, b, strict=False):
        for k in COMPARED:
            if sa.get(k) is None or sb.get(k) is None:
                assert sa.get(k) == sb.get(k), (sa["step"], k)
            else:
                assert sa[k] == pytest.approx(sb[k], rel=1e-5, abs=1e-7), (sa["step"], k, sa[k], sb[k])
