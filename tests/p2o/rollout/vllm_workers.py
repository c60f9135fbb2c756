"""Rank functions of the vLLM tests (spawned by `megatron_bridge.launch.spawn`: fresh processes with the torchrun
environment vLLM's external launcher reads). vLLM in a process binds its threads and patches torch, so every
vLLM test runs its engines in processes of its own. Results travel through `out_file` (torch.save on rank 0)."""
from __future__ import annotations

import torch

PROMPTS = ["What is 2 + 3?", "Compute 12 * 7 and explain.", "hi", "The quick brown fox jumps over the lazy dog " * 3]


def _perturbed(model_dir: str, seed: int = 1, scale: float = 0.5):
    """An HF model with seeded noise on every weight: 'new weights' a trainer could have produced."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return model


def _teacher_forced(model, prompt_ids: list[int], response_ids: list[int], temperature: float, top_k: int,
                    top_p: float) -> torch.Tensor:
    """Log-probs [len(response)] of `response_ids` under `process_logits` of a transformers forward pass."""
    from p2o.rollout.sampling import process_logits

    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float()
    n = logits.shape[0]
    lp = process_logits(logits, torch.full((n,), temperature), torch.full((n,), top_k), torch.full((n,), top_p))
    return lp.gather(-1, torch.tensor(response_ids)[:, None]).squeeze(-1)


def _outputs(gens) -> list[tuple[list[int], list[float], str, str, int]]:
    return [(g.response_ids, g.logprobs, g.text, g.finish_reason, g.policy_version) for per in gens for g in per]


def engine_vs_hf_worker(model_dir: str, policy_dir: str, out_file: str) -> None:
    """One rank: the vLLM engine against the HF engine and a transformers forward pass (fp32), across a sleep /
    reload / wake cycle, an incomplete weight stream, stop strings and seeds; the engine behind the OpenAI gateway."""
    import openai

    from p2o.rollout.engine import EngineAsleep, GenerationRequest, SamplingParams
    from p2o.rollout.factory import build_gateway
    from p2o.rollout.hf_engine import HFEngine
    from p2o.rollout.vllm_engine import BrokenWeights, VLLMEngine
    from p2o.rollout.weights import state_dict_buckets

    res: dict = {}
    engine = VLLMEngine(model_dir, dtype="float32", max_model_len=512, kv_cache_bytes=128 << 20, max_prompt_tokens=64)
    hf = HFEngine.from_pretrained(model_dir, max_batch_size=8)
    tok = hf.tokenizer
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    reqs = [GenerationRequest(p, greedy, f"g{i}") for i, p in enumerate(prompts)]
    res["greedy_vllm"], res["greedy_hf"] = _outputs(engine.generate(reqs)), _outputs(hf.generate(reqs))

    # sampled: behaviour log-probs = the processed distribution (temperature, top-k, top-p) of the sampled token
    sampled = []
    for params in (SamplingParams(n=3, temperature=0.8, top_k=20, max_new_tokens=10, seed=5),
                   SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=6),
                   SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=7)):
        gens = engine.generate([GenerationRequest(prompts[1], params)])[0]
        again = engine.generate([GenerationRequest(prompts[1], params), GenerationRequest(prompts[0], params)])[0]
        for g, h in zip(gens, again, strict=True):
            ref = _teacher_forced(hf.model, g.prompt_ids, g.response_ids, params.temperature, params.top_k,
                                  params.top_p)
            sampled.append((ref, torch.tensor(g.logprobs), g.response_ids == h.response_ids, g.response_ids))
    res["sampled"] = sampled

    # sleep / reload / wake: the reloaded engine equals the HF engine with the new weights
    new = _perturbed(model_dir)
    engine.sleep()
    res["is_sleeping"] = engine.is_sleeping
    try:
        engine.generate(reqs[:1])
        res["asleep_refused"] = False
    except EngineAsleep:
        res["asleep_refused"] = True
    engine.load_weights(state_dict_buckets(new, 1 << 20), version=1)
    engine.wake_up()
    hf.load_weights(state_dict_buckets(new, 1 << 20), version=1)
    res["reloaded_vllm"], res["reloaded_hf"] = _outputs(engine.generate(reqs)), _outputs(hf.generate(reqs))

    # an incomplete stream is refused, and so is generating from the half-updated weights, until a full reload
    partial = [(n, t) for n, t in new.named_parameters() if not n.endswith("q_proj.weight")]
    try:
        engine.load_weights(iter([partial]), version=2)
        res["partial_error"] = ""
    except ValueError as e:
        res["partial_error"] = str(e)
    try:
        engine.generate(reqs[:1])
        res["broken_refused"] = False
    except BrokenWeights:
        res["broken_refused"] = True
    engine.load_weights(state_dict_buckets(new, 1 << 20), version=2)
    res["recovered_vllm"] = _outputs(engine.generate(reqs))
    try:
        engine.load_weights(state_dict_buckets(new, 1 << 20), version=1)
        res["older_version_refused"] = False
    except ValueError:
        res["older_version_refused"] = True
    try:
        engine.generate([GenerationRequest(list(range(65)), greedy, "long")])
        res["long_prompt_error"] = ""
    except ValueError as e:
        res["long_prompt_error"] = str(e)

    # stop strings and EOS on the trained tiny policy (it answers \boxed{3}<eos>)
    from p2o import prompts as chat

    policy_engine_hf = HFEngine.from_pretrained(policy_dir, max_batch_size=8)
    engine.load_weights(state_dict_buckets(policy_engine_hf.model, 1 << 20), version=3)
    policy_engine_hf.load_weights(state_dict_buckets(policy_engine_hf.model, 1 << 20), version=3)
    ids = chat.encode(tok, chat.messages("Problem 3: find the hidden value of item 3."))
    stops = [SamplingParams(temperature=0.0, max_new_tokens=16),
             SamplingParams(temperature=0.0, max_new_tokens=16, stop=["{3"]),
             SamplingParams(temperature=0.0, max_new_tokens=16, stop=["}"]),
             SamplingParams(temperature=0.0, max_new_tokens=2)]
    reqs = [GenerationRequest(ids, p) for p in stops]
    res["stop_vllm"], res["stop_hf"] = _outputs(engine.generate(reqs)), _outputs(policy_engine_hf.generate(reqs))

    # the same engine behind the OpenAI gateway (scheduler, HTTP, openai client)
    from p2o.config import RolloutConfig

    gw = build_gateway(engine, tok, RolloutConfig(max_batch_size=8), "policy").start()
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none")
        resp = client.chat.completions.create(model="policy", messages=chat.messages(
            "Problem 3: find the hidden value of item 3."), max_tokens=16, temperature=0.0)
        res["gateway_text"] = resp.choices[0].message.content
        res["gateway_version"] = resp.model_extra.get("policy_version")
    finally:
        gw.stop()
    torch.save(res, out_file)


def megatron_worker(model_dir: str, vllm_tp: int, out_file: str) -> None:
    """Megatron TP = world size, a vLLM engine of `vllm_tp` on every rank (replicas of consecutive ranks), rank 0's
    scheduler driving them all in generation phases: vLLM's log-probs against Megatron's and transformers' on the
    same tokens, before and after an optimizer step whose weights every rank streams into its own engine."""
    import os

    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from megatron_bridge.parallel import shutdown_parallel
    from megatron_bridge.policy import MegatronPolicy
    from p2o.config import RunConfig
    from p2o.rollout.engine import GenerationRequest, SamplingParams
    from p2o.rollout.phases import CollectiveEngine, PhaseGroup, follow
    from p2o.rollout.scheduler import Scheduler
    from p2o.rollout.vllm_engine import VLLMEngine
    from p2o.train.policy import SequenceBatch

    cfg = RunConfig()
    cfg.parallel.tp = int(os.environ["WORLD_SIZE"])  # Megatron TP over every rank
    cfg.grpo.micro_batch_size = 4
    cfg.optim.lr = 5e-2
    policy = MegatronPolicy.from_config(cfg, model_dir)
    rank, world = dist.get_rank(), dist.get_world_size()
    engine = VLLMEngine(model_dir, tp=vllm_tp, dtype="float32", max_model_len=256, kv_cache_bytes=64 << 20)
    group = PhaseGroup(vllm_tp) if world > 1 else None
    sched = None
    if rank == 0:
        front = CollectiveEngine(engine, group) if group else engine
        sched = Scheduler(front, max_batch_sequences=64).start()
        sched.pause()
    prompts = [[1, 17, 300, 4000, 12], [5, 6, 7], [42, 4242, 9, 31000, 77, 8], [3, 1, 4, 1, 5, 9, 2, 6]]

    def phase(seed: int):
        """A generation phase: rank 0 serves the requests through the scheduler, the others follow."""
        if rank != 0:
            follow(engine, group)
            return None
        reqs = [GenerationRequest(p, SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=seed + i))
                for i, p in enumerate(prompts)]
        futures = sched.submit(reqs, priority="training")
        sched.resume()
        gens = [f.result() for f in futures]
        sched.pause()
        if group:
            front.end_phase()
        return [g for per in gens for g in per]

    def score(flat):
        flat = [(g.prompt_ids, g.response_ids, g.logprobs, g.policy_version) for g in flat] if flat else None
        box = [flat]
        dist.broadcast_object_list(box, src=0)
        flat = box[0]
        batch = SequenceBatch([f[0] for f in flat], [f[1] for f in flat])
        return torch.tensor([x for f in flat for x in f[2]]), policy.logprobs(batch), batch, [f[3] for f in flat]

    def sync(version: int) -> None:
        stream = policy.export_weights(bucket_bytes=64 * 1024)
        if rank == 0:
            sched.update_weights(stream, version)
        else:
            engine.load_weights(stream, version)

    res: dict = {"world": world, "vllm_tp": vllm_tp}
    res["vllm0"], res["megatron0"], batch, res["versions0"] = score(phase(1))
    if rank == 0:  # transformers on the same tokens
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        res["hf0"] = torch.cat([_teacher_forced(hf, p, r, 1.0, 0, 1.0)
                                for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True)])
    adv = torch.randn(batch.num_response_tokens, generator=torch.Generator().manual_seed(0))
    norm = float(batch.num_response_tokens)
    policy.train_step(batch, {"advantages": adv}, lambda lp, ti: (-(ti["advantages"] * lp).sum() / norm, {}))
    res["moved"] = float((policy.logprobs(batch) - res["megatron0"]).abs().max())
    sync(1)
    res["vllm1"], res["megatron1"], batch1, res["versions1"] = score(phase(2))
    if rank == 0:  # the initial weights' log-probs of the new tokens: what a sync that changed nothing would give
        res["hf_initial1"] = torch.cat([_teacher_forced(hf, p, r, 1.0, 0, 1.0)
                                        for p, r in zip(batch1.prompt_ids, batch1.response_ids, strict=True)])
        sched.close()
        torch.save(res, out_file)
    dist.barrier()
    shutdown_parallel()


def gpu_sleep_cycle_worker(model_dir: str, sleep_level: int, out_file: str) -> None:
    """CUDA only: vLLM with its sleep mode and CUDA graphs; sleep frees GPU memory, the reload after a sleep at
    `sleep_level` gives the HF engine's greedy outputs under the new weights."""
    from p2o.rollout.engine import GenerationRequest, SamplingParams
    from p2o.rollout.hf_engine import HFEngine
    from p2o.rollout.vllm_engine import VLLMEngine
    from p2o.rollout.weights import state_dict_buckets

    engine = VLLMEngine(model_dir, sleep_level=sleep_level, gpu_memory_utilization=0.2, dtype="float32",
                        max_model_len=256, execution="compiled")
    reqs = [GenerationRequest([1, 2, 3, 4], SamplingParams(temperature=0.0, max_new_tokens=8)),
            GenerationRequest([7, 8], SamplingParams(temperature=0.0, max_new_tokens=8))]
    res: dict = {"can_sleep": engine.can_sleep, "before": _outputs(engine.generate(reqs))}
    free_awake = torch.cuda.mem_get_info()[0]
    engine.sleep()
    res["freed_bytes"] = torch.cuda.mem_get_info()[0] - free_awake
    new = _perturbed(model_dir)
    engine.load_weights(state_dict_buckets(new.cuda(), 1 << 20), version=1)
    engine.wake_up()
    res["after"] = _outputs(engine.generate(reqs))
    hf = HFEngine.from_pretrained(model_dir, device="cuda")
    hf.load_weights(state_dict_buckets(new, 1 << 20), version=1)
    res["expected"] = _outputs(hf.generate(reqs))
    torch.save(res, out_file)
