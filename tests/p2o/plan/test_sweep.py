"""The scaling sweep: manifest lines from the planner, the CSV from real metrics files, the submit script."""
import csv
import os
import subprocess
import sys

from p2o.plan.layouts import RunSettings
from p2o.plan.sweep import collect, layout_lines, main
from p2o.telemetry.metrics import MetricsLogger


def test_layout_lines_follow_the_planner(repo_root):
    from p2o.config import load_config
    from p2o.plan.from_config import settings_from_config

    values = settings_from_config(load_config(str(repo_root / "configs" / "scaling" / "qwen3_32b_p2o.yaml")))[1]
    rows = layout_lines("Qwen3-32B", [1, 2], top=1, run=RunSettings(**(values | {"vllm_tp": 0})), cluster_kw={})
    assert [r["nodes"] for r in rows] == [2]  # nothing fits on one node
    three = layout_lines("Qwen3-4B", [1], top=3, run=RunSettings(recompute=True), cluster_kw={})
    assert len(three) == 3 and three[0]["pred_step_s"] <= three[-1]["pred_step_s"]


def test_collect_reads_metrics(tmp_path):
    run = tmp_path / "Qwen3-4B-n1-tp1-pp1"
    with MetricsLogger(run) as m:
        for step, t in enumerate([50.0, 10.0, 12.0], 1):  # the first step is warm-up
            m.log({"time_generate_s": t / 2, "time_old_logprob_s": 1.0, "time_update_s": 2.0, "time_step_s": t,
                   "gen_tokens": 8000, "gpu0/mem_used_gib": 60.0 + step, "gpu1/mem_used_gib": 50.0}, step=step,
                  kind="step")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("name\tmodel\tnodes\ttp\tpp\tdp\tvllm_tp\tpred_step_s\trun_dir\n"
                        f"{run.name}\tQwen3-4B\t1\t1\t1\t8\t1\t9.5\t{run.name}\n"
                        "missing\tQwen3-4B\t2\t1\t1\t16\t1\t5.0\tmissing\n")
    rows = collect(manifest, tmp_path / "sweep.csv", gpus_per_node=8, skip=1)
    assert rows[0]["time_step_s"] == 11.0 and rows[0]["peak_gpu_mem_gib"] == 63.0
    assert rows[0]["gen_tokens_per_s_per_gpu"] == round(8000 / 11.0 / 8, 1)
    assert rows[1]["status"] == "no metrics.jsonl"
    back = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert back[0]["pred_step_s"] == "9.5" and back[0]["status"] == "ok"


def test_bad_model_is_a_clear_error(capsys):
    assert main(["layouts", "--model", "Qwen3-5B"]) == 2
    assert "--model: got 'Qwen3-5B'" in capsys.readouterr().err


def test_submit_script_dry_run(tmp_path, repo_root):
    env = dict(os.environ, PYTHON=sys.executable, DRY_RUN="1", MODELS="8b", NODE_COUNTS="1 4",
               SWEEP_DIR=str(tmp_path / "sweep"))
    out = subprocess.run(["bash", str(repo_root / "slurm" / "scaling_sweep.sh"), "submit"], env=env, cwd=repo_root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("CONFIG=")]
    assert len(lines) == 2 and all("configs/scaling/qwen3_8b_p2o.yaml" in ln and "bash slurm/p2o_qwen3.sh" in ln
                                   for ln in lines)
    assert "NODES=4" in lines[1] and "parallel.tp=" in lines[1]
    manifest = list(csv.DictReader((tmp_path / "sweep" / "manifest.tsv").open(), delimiter="\t"))
    assert [m["nodes"] for m in manifest] == ["1", "4"] and manifest[0]["config"].endswith("qwen3_8b_p2o.yaml")
