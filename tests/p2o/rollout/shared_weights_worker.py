"""Rank function of the shared-weights test (spawned by `megatron_bridge.launch.spawn`): one HF engine adopts
the Megatron policy's exported views, another copies the same stream; both sample before and after a training
step, and a request fenced on the next policy version waits for the shared engine's weight load."""
from __future__ import annotations

import time

import torch


def shared_vs_copied_worker(model_dir: str, out_file: str) -> None:
    from megatron_bridge.parallel import shutdown_parallel
    from megatron_bridge.policy import MegatronPolicy
    from p2o.config import RunConfig
    from p2o.rollout.engine import GenerationRequest, SamplingParams
    from p2o.rollout.hf_engine import HFEngine, StaleWeights
    from p2o.rollout.scheduler import Scheduler
    from p2o.train.policy import SequenceBatch

    cfg = RunConfig()
    cfg.grpo.micro_batch_size = 4
    cfg.optim.lr = 5e-2
    policy = MegatronPolicy.from_config(cfg, model_dir)
    copied = HFEngine.from_pretrained(model_dir, max_batch_size=4)
    shared = HFEngine.from_pretrained(model_dir, max_batch_size=4)
    prompts = [[1, 17, 300, 4000, 12], [5, 6, 7], [42, 4242, 9, 31000, 77, 8]]

    def views():
        stream = policy.export_weights(bucket_bytes=64 * 1024)
        stream.views = True
        return stream

    def sample(engine, seed: int):
        gens = engine.generate([GenerationRequest(p, SamplingParams(n=2, temperature=1.0, max_new_tokens=8,
                                                                    seed=seed + i)) for i, p in enumerate(prompts)])
        flat = [g for per in gens for g in per]
        return flat, [g.response_ids for g in flat], torch.tensor([x for g in flat for x in g.logprobs])

    res: dict = {}
    copied.load_weights(policy.export_weights(bucket_bytes=64 * 1024), 0)
    shared.load_weights(views(), 0)
    policy_storage = {p.untyped_storage().data_ptr() for c in policy.chunks for p in c.parameters()}
    not_shared = [(n, p) for n, p in shared.model.named_parameters()
                  if p.untyped_storage().data_ptr() not in policy_storage]
    res["not_shared"] = [n for n, _ in not_shared]
    res["not_shared_bytes"] = sum(p.numel() * p.element_size() for _, p in not_shared)
    res["qkv_bytes"] = sum(p.numel() * p.element_size() for n, p in shared.model.named_parameters()
                           if any(f"{x}_proj" in n for x in "qkv"))

    flat, res["ids_copied_before"], res["lp_copied_before"] = sample(copied, 1)
    _, res["ids_shared_before"], res["lp_shared_before"] = sample(shared, 1)
    batch = SequenceBatch([g.prompt_ids for g in flat], [g.response_ids for g in flat])
    lp0 = policy.logprobs(batch)
    adv = torch.randn(batch.num_response_tokens, generator=torch.Generator().manual_seed(0))
    norm = float(batch.num_response_tokens)
    policy.train_step(batch, {"advantages": adv}, lambda lp, ti: (-(ti["advantages"] * lp).sum() / norm, {}))
    res["moved"] = float((policy.logprobs(batch) - lp0).abs().max())
    try:
        sample(shared, 2)
        res["stale_refused"] = False
    except StaleWeights:
        res["stale_refused"] = True

    # the fence: a request for version 1 waits (the scheduler is serving) until the views are loaded at 1
    sched = Scheduler(shared, max_batch_sequences=8).start()
    req = GenerationRequest(prompts[0], SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=7))
    (fut,) = sched.submit([req], min_policy_version=1)
    time.sleep(0.5)
    res["fence_waited"] = not fut.done()
    sched.update_weights(views(), 1)
    gens = fut.result(timeout=120)
    sched.close()
    res["fenced_version"] = min(g.policy_version for g in gens)
    res["fenced_ids"] = [g.response_ids for g in gens]
    res["fenced_lp"] = torch.tensor([x for g in gens for x in g.logprobs])
    copied.load_weights(policy.export_weights(bucket_bytes=64 * 1024), 1)
    ref = copied.generate([req])[0]
    res["fence_ref_ids"] = [g.response_ids for g in ref]
    res["fence_ref_lp"] = torch.tensor([x for g in ref for x in g.logprobs])

    _, res["ids_copied_after"], res["lp_copied_after"] = sample(copied, 3)
    _, res["ids_shared_after"], res["lp_shared_after"] = sample(shared, 3)
    torch.save(res, out_file)
    shutdown_parallel()
