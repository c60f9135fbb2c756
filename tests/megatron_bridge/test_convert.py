"""`p2o convert` round trip (bit-exact), bad checkpoints (errors name the tensor), export stream memory bound."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mb_workers import bad_input_worker, export_memory_worker, once_per_session
from safetensors.torch import save_file

from megatron_bridge.hf_io import INDEX, HFCheckpoint
from megatron_bridge.launch import spawn

CONFIGS = Path(__file__).parent / "configs"
LLAMA = CONFIGS / "llama_gqa8_hd8_untied_rope3.json"

pytestmark = [pytest.mark.multiproc, pytest.mark.slow, pytest.mark.xdist_group("megatron_convert")]


def p2o(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "p2o.cli", "--log-level=WARNING", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def llama_dir():
    from p2o.models import resolve_model_dir

    return resolve_model_dir(str(LLAMA), init_seed=3)


@pytest.fixture(scope="session")
def megatron_ckpt(llama_dir, repo_root, tmp_path_factory, worker_id):
    def produce(tmp):
        out = tmp / "mcore"
        r = p2o("convert", "hf-to-megatron", "--hf", str(llama_dir), "--out", str(out), cwd=repo_root)
        assert r.returncode == 0, r.stderr[-3000:]
        return str(out)

    return Path(once_per_session(tmp_path_factory, worker_id, "megatron_convert_ckpt", produce))


def test_round_trip_is_bit_exact(llama_dir, megatron_ckpt, repo_root, tmp_path):
    back = tmp_path / "hf_back"
    # Convert back at TP=2 (resharded from the TP=1 checkpoint), in small shards to exercise the index.
    r = p2o("convert", "megatron-to-hf", "--megatron", str(megatron_ckpt), "--out", str(back), "--tp", "2",
            "--shard-bytes", "40000", cwd=repo_root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (back / INDEX).is_file() and (back / "config.json").is_file()
    a, b = HFCheckpoint(llama_dir), HFCheckpoint(back)
    assert sorted(a.names()) == sorted(b.names())
    for name in a.names():
        x, y = a.get(name), b.get(name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


def _corrupt(src: Path, dst: Path, edit) -> str:
    """Copy an HF dir with its tensors passed through `edit(dict)`; returns dst."""
    dst.mkdir(parents=True)
    shutil.copy2(src / "config.json", dst / "config.json")
    ck = HFCheckpoint(src)
    tensors = {n: ck.get(n) for n in ck.names()}
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return str(dst)


def test_bad_checkpoints_name_the_tensor(llama_dir, megatron_ckpt, tmp_path):
    missing = _corrupt(llama_dir, tmp_path / "missing", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    extra = _corrupt(llama_dir, tmp_path / "extra",
                     lambda t: t.__setitem__("model.layers.7.self_attn.q_proj.weight", torch.zeros(2, 2)))
    shaped = _corrupt(llama_dir, tmp_path / "shaped", lambda t: t.__setitem__(
        "model.layers.0.self_attn.k_proj.weight", t["model.layers.0.self_attn.k_proj.weight"][:8].clone()))
    # A Qwen3 twin of the Llama config (q/k norms the Llama checkpoint lacks) and a model of other shapes.
    twin = tmp_path / "qwen3_twin"
    twin.mkdir()
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3")
    (twin / "config.json").write_text(json.dumps(cfg))
    other = tmp_path / "other"
    other.mkdir()
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64)
    (other / "config.json").write_text(json.dumps(cfg))
    out = str(tmp_path / "bad.pt")
    spawn(bad_input_worker, 1, (
        [(str(llama_dir), missing), (str(llama_dir), extra), (str(llama_dir), shaped), (str(llama_dir), str(llama_dir))],
        [(str(twin), str(megatron_ckpt / "model")), (str(other), str(megatron_ckpt / "model")),
         (str(llama_dir), str(megatron_ckpt / "model"))], out))
    res = torch.load(out)
    hf_missing, hf_extra, hf_shaped, hf_good = res["hf"]
    assert "model.layers.1.mlp.up_proj.weight" in hf_missing and "missing" in hf_missing
    assert "model.layers.7.self_attn.q_proj.weight" in hf_extra and "unexpected" in hf_extra
    assert "model.layers.0.self_attn.k_proj.weight" in hf_shaped and "(8, 48)" in hf_shaped
    assert hf_good == "no error"
    mc_missing, mc_shaped, mc_good = res["megatron"]
    assert "q_layernorm" in mc_missing, mc_missing
    assert "decoder.layers." in mc_shaped or "embedding" in mc_shaped, mc_shaped
    assert mc_good == "no error"


def test_export_peak_memory_is_bounded(tmp_path, monkeypatch):
    # A fixed mmap threshold: freed large tensors go straight back to the OS, so RSS follows live memory.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    bucket = 4 * 1024 * 1024
    out = str(tmp_path / "mem.pt")
    spawn(export_memory_worker, 1, (str(CONFIGS / "llama_export_mem.json"), bucket, out))
    r = torch.load(out)
    assert r["exported"] == r["model_bytes"]  # untied: every parameter exported once, padding-free vocab
    assert r["n_buckets"] > 10
    slack = 12 * 1024 * 1024  # allocator / interpreter noise
    bound = bucket + r["largest"] + slack
    assert r["growth"] <= bound, f"RSS grew {r['growth'] / 2**20:.1f} MiB > bound {bound / 2**20:.1f} MiB"
    assert bound < r["model_bytes"] / 2  # the bound is meaningful: far below a second copy of the model
