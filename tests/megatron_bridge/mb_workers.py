"""Rank functions for the multi-process Megatron tests (spawned by `megatron_bridge.launch.spawn`).

Each writes its results with torch.save from one rank; the tests compare them against references.
"""
from __future__ import annotations

import torch

from p2o.policy_api import SequenceBatch

VOCAB_LIMIT = 500  # token ids used by the synthetic batch (below every test model's vocabulary)


def synthetic_batch(seed: int = 0, rows: int = 5) -> tuple[SequenceBatch, dict[str, torch.Tensor]]:
    """Rows of random prompts (3-6 tokens) and responses (2-5 tokens), with per-token advantages."""
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for _ in range(rows):
        p = int(torch.randint(3, 7, (1,), generator=g))
        r = int(torch.randint(2, 6, (1,), generator=g))
        prompts.append(torch.randint(0, VOCAB_LIMIT, (p,), generator=g).tolist())
        responses.append(torch.randint(0, VOCAB_LIMIT, (r,), generator=g).tolist())
    batch = SequenceBatch(prompts, responses)
    adv = torch.randn(batch.num_response_tokens, generator=g)
    return batch, {"advantages": adv}


def pg_loss(logprobs: torch.Tensor, inputs: dict[str, torch.Tensor], normaliser: float):
    """-sum(A * logp) / normaliser: a policy-gradient loss, globally normalised by the caller."""
    loss = -(inputs["advantages"] * logprobs).sum() / normaliser
    return loss, {"mean_logprob": float(logprobs.detach().mean()) if logprobs.numel() else 0.0}


def make_cfg(tp: int, pp: int, vpp: int = 1, dist_opt: bool = False, use_kernels: bool = False):
    from p2o.config import RunConfig

    cfg = RunConfig()
    cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.vpp = tp, pp, vpp
    cfg.parallel.distributed_optimizer = dist_opt
    cfg.grpo.micro_batch_size = 2
    cfg.optim.lr = 1e-2
    cfg.optim.warmup_steps = 2
    cfg.optim.grad_clip = 1.0
    cfg.train.use_kernels = use_kernels
    return cfg


def run_scenario(model_dir: str, tp: int, pp: int, steps: int, save_dir: str = "", load_dir: str = "",
                 resume_steps: int = 0, export: bool = False, use_kernels: bool = False,
                 dist_opt: bool = False) -> dict:
    """Train `steps` steps (then optionally save); optionally load a checkpoint and train `resume_steps` more.

    Re-creates Megatron's groups when the current ones have another TP x PP (torch.distributed stays up).
    """
    import gc

    from megatron.core import parallel_state as ps

    from megatron_bridge.policy import MegatronPolicy

    if ps.model_parallel_is_initialized() and (ps.get_tensor_model_parallel_world_size(),
                                               ps.get_pipeline_model_parallel_world_size()) != (tp, pp):
        ps.destroy_model_parallel()
    gc.collect()
    policy = MegatronPolicy.from_config(make_cfg(tp, pp, dist_opt=dist_opt, use_kernels=use_kernels), model_dir)
    batch, inputs = synthetic_batch()
    norm = float(batch.num_response_tokens)
    res: dict = {"logprobs0": policy.logprobs(batch), "metrics": []}
    for _ in range(steps):
        m = policy.train_step(batch, inputs, lambda lp, ti: pg_loss(lp, ti, norm))
        res["metrics"].append((m.loss, m.grad_norm, m.lr, m.extra["mean_logprob"]))
    res["logprobs"] = policy.logprobs(batch)
    if save_dir:
        policy.save(save_dir)
    if load_dir:
        policy.load(load_dir)
        res["loaded_step"] = policy.step
        res["resume_metrics"] = []
        for _ in range(resume_steps):
            m = policy.train_step(batch, inputs, lambda lp, ti: pg_loss(lp, ti, norm))
            res["resume_metrics"].append((m.loss, m.grad_norm, m.lr, m.extra["mean_logprob"]))
        res["resume_logprobs"] = policy.logprobs(batch)
    if export:
        res["export"] = exported_logprobs(policy, model_dir, batch)
    return res


def scenarios_worker(model_dir: str, scenarios: dict[str, dict], out_file: str) -> None:
    """Run named `run_scenario` keyword sets one after another in one launch; rank 0 saves {name: result}."""
    import torch.distributed as dist

    from megatron_bridge.parallel import shutdown_parallel

    results = {name: run_scenario(model_dir, **kw) for name, kw in scenarios.items()}
    if dist.get_rank() == 0:
        torch.save(results, out_file)
    dist.barrier()
    shutdown_parallel()


def exported_logprobs(policy, model_dir: str, batch: SequenceBatch) -> torch.Tensor:
    """Stream the policy's weights into a fresh transformers model (rank 0) and score `batch` with it."""
    import torch.distributed as dist
    from transformers import AutoConfig, AutoModelForCausalLM

    from megatron_bridge.export import load_hf_weights_stream

    model = None
    if dist.get_rank() == 0:
        torch.manual_seed(999)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32)
    stream = policy.export_weights(bucket_bytes=64 * 1024)
    if model is None:
        for _ in stream:
            pass
        return torch.empty(0)
    load_hf_weights_stream(model, stream)
    return hf_logprobs(model, batch)


def hf_logprobs(model, batch: SequenceBatch) -> torch.Tensor:
    """Independent reference: packed log p(response tokens) from a transformers model, row by row."""
    out = []
    model.eval()
    with torch.no_grad():
        for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True):
            ids = torch.tensor([p + r])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            pos = torch.arange(len(p) - 1, len(p) + len(r) - 1)
            out.append(logp[pos, torch.tensor(r)])
    return torch.cat(out)


def bad_input_worker(hf_cases: list[tuple[str, str]], megatron_cases: list[tuple[str, str]], out_file: str) -> None:
    """Try loading corrupted checkpoints; record each error message (or 'no error').

    hf_cases: (HF dir with the model's config.json, HF dir with the weights to load).
    megatron_cases: (HF config dir of the model to build, Megatron checkpoint dir to load into it).
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_bridge.checkpoint import load_checkpoint
    from megatron_bridge.parallel import init_parallel, shutdown_parallel
    from megatron_bridge.provider import bridge_and_provider
    from megatron_bridge.weights import load_hf_checkpoint
    from p2o.config import ParallelConfig

    results: dict = {"hf": [], "megatron": []}
    for kind, cases in (("hf", hf_cases), ("megatron", megatron_cases)):
        for config_dir, weights in cases:
            layout = init_parallel(ParallelConfig())
            bridge, provider = bridge_and_provider(config_dir)
            chunks = provider.provide(layout)
            try:
                if kind == "hf":
                    load_hf_checkpoint(chunks, bridge, provider, weights, layout)
                else:
                    load_checkpoint(weights, chunks)
                results[kind].append("no error")
            except Exception as e:  # noqa: BLE001  (the test inspects the message)
                results[kind].append(f"{type(e).__name__}: {e}")
            ps.destroy_model_parallel()
    if dist.get_rank() == 0:
        torch.save(results, out_file)
    shutdown_parallel()


def export_memory_worker(config_dir: str, bucket_bytes: int, out_file: str) -> None:
    """Build a randomly initialised model, then measure RSS growth while iterating its export stream."""
    import threading
    import time

    import psutil

    from megatron_bridge.export import WeightExport
    from megatron_bridge.parallel import init_parallel, shutdown_parallel
    from megatron_bridge.provider import bridge_and_provider
    from p2o.config import ParallelConfig

    layout = init_parallel(ParallelConfig())
    bridge, provider = bridge_and_provider(config_dir)
    chunks = provider.provide(layout)
    proc = psutil.Process()
    model_bytes = sum(p.numel() * p.element_size() for c in chunks for p in c.parameters())
    largest = max(p.numel() * p.element_size() for c in chunks for p in c.parameters())
    try:  # hand freed heap (e.g. init-time master weights) back to the OS so reuse cannot hide growth
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    baseline = proc.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    n_tensors, n_buckets, exported = 0, 0, 0
    for bucket in WeightExport(chunks, bridge, provider, layout, bucket_bytes):
        n_buckets += 1
        n_tensors += len(bucket)
        exported += sum(t.numel() * t.element_size() for _, t in bucket)
        peak[0] = max(peak[0], proc.memory_info().rss)
        del bucket  # a consumer drops each bucket before asking for the next
    done.set()
    sampler.join()
    torch.save(dict(growth=peak[0] - baseline, model_bytes=model_bytes, largest=largest, n_tensors=n_tensors,
                    n_buckets=n_buckets, exported=exported), out_file)
    shutdown_parallel()


def once_per_session(tmp_path_factory, worker_id: str, name: str, produce):
    """`produce(dir)` once per test session, even when pytest-xdist workers both need it (file lock + cache).

    `produce` writes into `dir` and returns a torch-saveable result; other workers wait and load it.
    """
    if worker_id == "master":  # not under xdist
        return produce(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # this session's directory, shared by its workers
    out_dir, result = root / name, root / f"{name}.pt"
    with FileLock(str(root / f"{name}.lock")):
        if not result.is_file():
            out_dir.mkdir(exist_ok=True)
            torch.save(produce(out_dir), result)
    return torch.load(result)


def save_on_rank0(results, out_file: str) -> None:
    """End of a spawned worker: rank 0 saves `results`, every rank waits, then the parallel state is torn down."""
    import torch.distributed as dist

    from megatron_bridge.parallel import shutdown_parallel

    if dist.get_rank() == 0:
        torch.save(results, out_file)
    dist.barrier()
    shutdown_parallel()


def spawned_results(tmp_path_factory, worker_id: str, name: str, worker, nprocs: int, args: tuple):
    """Run `worker(*args, out_file)` on `nprocs` ranks once per test session and return what it saved
    (with `save_on_rank0`)."""
    from megatron_bridge.launch import spawn

    def produce(tmp):
        spawn(worker, nprocs, (*args, str(tmp / "results.pt")))
        return torch.load(tmp / "results.pt")

    return once_per_session(tmp_path_factory, worker_id, name, produce)
