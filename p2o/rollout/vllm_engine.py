"""Rollout engine on vLLM (GPU only), colocated with the trainer in the same processes. vLLM is imported lazily.

Written against vLLM 0.33 (`pip install "p2o[gpu]"` pins vllm==0.33.0). The phase cycle of one step:

    engine.generate(requests)                 # rollouts (KV cache + weights on the GPU)
    engine.sleep()                            # llm.sleep(level): level 1 offloads weights to host memory and
                                              # drops the KV cache; level 2 discards both
    ... trainer forward/backward/optimizer step uses the freed memory ...
    engine.load_weights(stream, version)      # llm.wake_up(tags=["weights"]) -> model.load_weights(bucket)
                                              # per bucket -> llm.reset_prefix_cache()
    engine.wake_up()                          # llm.wake_up(tags=["kv_cache"])

With sleep level 2 the weights are gone after `sleep()`, so the update must write every parameter: a
stream that misses one is an error (`WeightCoverage.require_complete`), never a silently stale model.

Tensor parallelism of vLLM is independent of the trainer's: every torchrun rank builds its own `LLM` with
`distributed_executor_backend="external_launcher"` and `tensor_parallel_size = vllm_tp` (as TRL's colocate
mode). The ranks of one vLLM TP group must submit identical prompts, so `generate` all-gathers the
requests inside the group, generates them all and returns this rank's share.

What is shared with the HF engine and tested on CPU: request expansion and per-sequence seeds
(`batching.py`), the conversion to vLLM sampling arguments and back (`vllm_sampling_kwargs`,
`generation_from_vllm`), name normalisation and coverage (`weights.py`), versioning (the scheduler). The
thin layer below that calls vLLM itself runs only where vLLM and CUDA are present.

Log-probs: the engine is built with `logprobs_mode="processed_logprobs"`, i.e. after temperature / top-k /
top-p, the convention of `engine.py`. The random streams differ from the HF engine's: a seeded request is
reproducible within vLLM, not across engines.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import torch

from p2o.rollout.batching import Sequence, expand, regroup
from p2o.rollout.engine import EngineAsleep, Generation, GenerationRequest, WeightBucket
from p2o.rollout.weights import WeightCoverage, normalize_name, tensor_bytes

log = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length", "abort": "length"}


def vllm_sampling_kwargs(seq: Sequence) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one sequence (n=1, the sequence's own seed)."""
    p = seq.params
    return dict(n=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k if p.top_k > 0 else 0,
                max_tokens=p.max_new_tokens, stop=list(p.stop) or None, seed=seq.seed, logprobs=0,
                include_stop_str_in_output=False, skip_special_tokens=True, detokenize=True)


def generation_from_vllm(seq: Sequence, output: Any, policy_version: int) -> Generation:
    """A `Generation` from a vLLM `CompletionOutput` (token_ids, text, logprobs, finish_reason)."""
    token_ids = list(output.token_ids)
    steps = output.logprobs or []
    if len(steps) != len(token_ids):
        raise ValueError(f"vLLM returned {len(steps)} log-prob entries for {len(token_ids)} tokens")
    logprobs = [float(step[tok].logprob) for tok, step in zip(token_ids, steps, strict=True)]
    return Generation(prompt_ids=seq.prompt_ids, response_ids=token_ids, logprobs=logprobs, text=output.text,
                      finish_reason=_FINISH.get(output.finish_reason or "length", "length"),
                      policy_version=policy_version)


class VLLMEngine:
    """`RolloutEngine` over an in-process `vllm.LLM` with sleep mode (see module docstring)."""

    def __init__(self, model_path: str, tp: int = 1, sleep_level: int = 1, gpu_memory_utilization: float = 0.5,
                 dtype: str = "bfloat16", max_model_len: int | None = None, seed: int = 0,
                 tp_group: Any = None, **llm_kwargs: Any):
        if sleep_level not in (1, 2):
            raise ValueError(f"rollout.vllm_sleep_level: got {sleep_level}; expected 1 or 2")
        if not torch.cuda.is_available():
            raise RuntimeError("the vLLM engine needs CUDA; use rollout.engine=hf on this machine")
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("rollout.engine=vllm needs vLLM: pip install 'vllm==0.33.0' (see docs/rollout.md)") from e
        self.sleep_level = sleep_level
        self.tp_group = tp_group
        self.policy_version = 0
        self._rng = random.Random(seed)
        self._asleep: set[str] = set()
        self.llm = LLM(model=model_path, tensor_parallel_size=tp, gpu_memory_utilization=gpu_memory_utilization,
                       dtype=dtype, max_model_len=max_model_len, seed=seed, enable_sleep_mode=True,
                       distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
                       **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    # ------------------------------------------------------------------------------------------ protocol
    @property
    def is_sleeping(self) -> bool:
        return bool(self._asleep)

    def sleep(self) -> None:
        if not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}

    def wake_up(self) -> None:
        if "weights" in self._asleep:
            self.llm.wake_up(tags=["weights"])
        if "kv_cache" in self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
        self._asleep = set()

    def load_weights(self, bucket_stream: Iterator[WeightBucket], version: int) -> None:
        if version < self.policy_version:
            raise ValueError(f"load_weights: version {version} is older than the loaded {self.policy_version}")
        if "weights" in self._asleep:
            self.llm.wake_up(tags=["weights"])   # KV cache stays asleep: only the weights need memory now
            self._asleep.discard("weights")
        model = self._model()
        cov = WeightCoverage(expected={n for n, _ in model.named_parameters()})
        device = next(model.parameters()).device
        for bucket in bucket_stream:
            batch = [(normalize_name(n), t.to(device, non_blocking=True)) for n, t in bucket]
            loaded = model.load_weights(weights=batch)  # vLLM models return the names they loaded
            if loaded is None and self.sleep_level == 2:
                raise RuntimeError(f"{type(model).__name__}.load_weights returned no loaded-parameter names, so "
                                   "a complete update cannot be verified; use rollout.vllm_sleep_level=1")
            cov.written.update(loaded or ())
            cov.tensors += len(batch)
            cov.bytes += sum(tensor_bytes(t) for _, t in batch)
        if self.sleep_level == 2:
            cov.require_complete("vLLM sleep level 2 discarded the weights")
        self.llm.reset_prefix_cache()
        self.policy_version = version
        log.info("vLLM: loaded %d tensors (%.1f MB) -> policy version %d", cov.tensors, cov.bytes / 1e6, version)

    def generate(self, requests: list[GenerationRequest]) -> list[list[Generation]]:
        if self._asleep:
            raise EngineAsleep("VLLMEngine.generate while asleep; call wake_up() first")
        from vllm import SamplingParams as VLLMSamplingParams

        mine = requests
        shares = self._gather(requests)
        everything = [r for share in shares for r in share]
        seqs = expand(everything, self._rng)
        outputs = self.llm.generate([{"prompt_token_ids": s.prompt_ids} for s in seqs],
                                    sampling_params=[VLLMSamplingParams(**vllm_sampling_kwargs(s)) for s in seqs],
                                    use_tqdm=False)
        results = {(s.request_index, s.sample_index): generation_from_vllm(s, out.outputs[0], self.policy_version)
                   for s, out in zip(seqs, outputs, strict=True)}
        grouped = regroup(everything, results)
        start = sum(len(share) for share in shares[:self._group_rank()])
        return grouped[start:start + len(mine)]

    # ------------------------------------------------------------------------------------------ internals
    def _model(self) -> Any:
        """The vLLM model module of this process (in-process executor with external_launcher)."""
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model

    def _group_rank(self) -> int:
        if self.tp_group is None:
            return 0
        return torch.distributed.get_rank(self.tp_group)

    def _gather(self, requests: list[GenerationRequest]) -> list[list[GenerationRequest]]:
        """Every rank's requests of this vLLM TP group (identical prompts on all its ranks)."""
        if self.tp_group is None:
            return [requests]
        shares: list[Any] = [None] * torch.distributed.get_world_size(self.tp_group)
        torch.distributed.all_gather_object(shares, requests, group=self.tp_group)
        return shares
