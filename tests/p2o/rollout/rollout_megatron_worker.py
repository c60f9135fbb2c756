"""Rank function for the engine <-> Megatron policy test (spawned by `megatron_bridge.launch.spawn`)."""
from __future__ import annotations

import torch


def engine_vs_policy_worker(model_dir: str, out_file: str) -> None:
    """Sample with the HF engine, score the samples with MegatronPolicy; train a step, stream the weights into
    the engine, sample and score again. Saves both pairs of log-probs."""
    from megatron_bridge.parallel import shutdown_parallel
    from megatron_bridge.policy import MegatronPolicy
    from p2o.config import RunConfig
    from p2o.rollout.engine import GenerationRequest, SamplingParams
    from p2o.rollout.hf_engine import HFEngine
    from p2o.train.policy import SequenceBatch

    cfg = RunConfig()
    cfg.grpo.micro_batch_size = 4
    cfg.optim.lr = 5e-2
    policy = MegatronPolicy.from_config(cfg, model_dir)
    engine = HFEngine.from_pretrained(model_dir, max_batch_size=4)
    prompts = [[1, 17, 300, 4000, 12], [5, 6, 7], [42, 4242, 9, 31000, 77, 8]]

    def sample_and_score(seed: int) -> tuple[torch.Tensor, torch.Tensor, SequenceBatch]:
        gens = engine.generate([GenerationRequest(p, SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=seed))
                                for p in prompts])
        flat = [g for per in gens for g in per]
        batch = SequenceBatch([g.prompt_ids for g in flat], [g.response_ids for g in flat])
        return torch.tensor([x for g in flat for x in g.logprobs]), policy.logprobs(batch), batch

    res: dict = {}
    res["engine0"], res["policy0"], batch = sample_and_score(1)
    adv = torch.randn(batch.num_response_tokens, generator=torch.Generator().manual_seed(0))
    norm = float(batch.num_response_tokens)
    policy.train_step(batch, {"advantages": adv}, lambda lp, ti: (-(ti["advantages"] * lp).sum() / norm, {}))
    engine.load_weights(policy.export_weights(bucket_bytes=64 * 1024), version=1)
    res["engine1"], res["policy1"], _ = sample_and_score(2)
    res["moved"] = float((policy.logprobs(batch) - res["policy0"]).abs().max())
    torch.save(res, out_file)
    shutdown_parallel()
