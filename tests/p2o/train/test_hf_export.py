"""`checkpoint.export_hf` and `p2o convert export`: the trained policy as a Hugging Face model directory.

A one-step CPU run of tiny-qwen3 (fp32, weight decay, so the step moves every matrix even when no rollout is
rewarded) writes run_dir/hf_export/ at its end. transformers loads it with `AutoModelForCausalLM` /
`AutoTokenizer`, and its logits equal those of the run's final Megatron checkpoint, loaded into a freshly built
Megatron model, to fp32 tolerance; `p2o convert export` from that checkpoint writes the same tensors.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from export_workers import checkpoint_logits_worker
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

REPO = Path(__file__).resolve().parents[3]


def _p2o(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "p2o.cli", "--log-level=WARNING", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out |= load_file(f)
    return out


def _train(run: Path, *overrides: str) -> None:
    r = _p2o("train", "--config", "configs/demo_cpu.yaml", "model.path=tiny-qwen3", "p2o.enabled=false",
             "rollout.max_new_tokens=8", "rollout.prompts_per_step=4", "rollout.n=2", "train.steps_per_epoch=1",
             "train.epochs=1", "data.eval_size=2", "logging.progress=false", "train.skip_zero_advantage_rows=false",
             "optim.lr=0.01", "optim.weight_decay=0.1", "checkpoint.export_hf=true", f"logging.run_dir={run}",
             *overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 1


@pytest.mark.parametrize("tp", [1, 2])
def test_run_end_export_loads_in_transformers_and_matches_the_trained_policy(tmp_path, tp):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_bridge.launch import spawn
    from p2o.models import resolve_model_dir

    run = tmp_path / "run"
    _train(run, f"parallel.tp={tp}")
    export = run / "hf_export"
    assert not (run / "hf_export.tmp").exists()
    names = {p.name for p in export.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names, names
    assert json.loads((export / "config.json").read_text())["torch_dtype"] == "float32"

    init_dir = resolve_model_dir("tiny-qwen3")
    trained, init = _tensors(export), _tensors(init_dir)
    assert trained.keys() == init.keys()
    moved = [n for n in trained if not torch.equal(trained[n], init[n])]
    assert any("mlp" in n for n in moved) and any("self_attn" in n for n in moved), moved  # the step trained

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    ids = tok(["What is 2 + 3? Put the answer in \\boxed{}.", "7 - 4 ="], return_tensors="pt",
              padding="max_length", max_length=16, truncation=True)["input_ids"]
    with torch.no_grad():
        hf = model(input_ids=ids).logits.float()

    ckpt = run / "checkpoints" / "step_000001" / "policy"
    assert ckpt.is_dir()
    out = tmp_path / "mcore_logits.pt"
    spawn(checkpoint_logits_worker, tp, (str(init_dir), str(ckpt), ids, tp, str(out)))
    ref = torch.load(out)
    assert ref.shape == hf.shape
    torch.testing.assert_close(hf, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    init_model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (init_model(input_ids=ids).logits - hf).abs().max() > 1e-3  # the reference can tell them apart

    if tp == 1:  # the offline path writes the same tensors from the saved checkpoint
        r = _p2o("convert", "export", "--run-dir", str(run), "--step", "1", "--out", str(tmp_path / "offline"))
        assert r.returncode == 0, r.stderr[-3000:]
        offline = _tensors(tmp_path / "offline")
        assert offline.keys() == trained.keys()
        assert all(offline[n].dtype == trained[n].dtype and torch.equal(offline[n], trained[n]) for n in trained)
        bad = _p2o("convert", "export", "--run-dir", str(run), "--step", "7", "--out", str(tmp_path / "x"))
        assert bad.returncode == 2 and "no complete checkpoint of step 7" in bad.stderr


def test_bf16_run_exports_bf16_and_the_offline_export_agrees(tmp_path):
    """model.dtype=bfloat16: the export holds bf16 tensors (config.json says so), transformers loads it, and
    `p2o convert export` (which rebuilds the model in the run's dtype) writes the same tensors."""
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    _train(run, "model.dtype=bfloat16")
    export = run / "hf_export"
    assert json.loads((export / "config.json").read_text())["torch_dtype"] == "bfloat16"
    trained = _tensors(export)
    assert {t.dtype for t in trained.values()} == {torch.bfloat16}
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits).all()
    r = _p2o("convert", "export", "--run-dir", str(run), "--out", str(tmp_path / "offline"))
    assert r.returncode == 0, r.stderr[-3000:]
    offline = _tensors(tmp_path / "offline")
    assert offline.keys() == trained.keys()
    assert all(offline[n].dtype == torch.bfloat16 and torch.equal(offline[n], trained[n]) for n in trained)
