"""Rollout engine on plain transformers models (CPU or GPU): batched decoding with a KV cache.

Decode loop (one `generate` call): the requests are expanded into sequences (n per request), sorted by
prompt length and decoded in slots of `max_batch_size` rows. Prompts are left-padded and prefilled
together; each step samples one token per row (`sampling.py`), rows that finish leave the batch (their KV
is dropped) and waiting sequences are prefilled and merged into the free slots (continuous refilling,
`kv.py`), until nothing is left.

Determinism:
- Each sequence draws its randomness from its own generator, seeded from (request seed, sample index), one
  uniform per step. A seeded request gives identical tokens across calls and engine instances on the same
  machine, software and batch composition.
- Across different batch compositions (other requests in the same call, a different `max_batch_size`) the
  random draws are identical, but padding and batch shape change the floating-point rounding of the logits
  (~1e-6 in fp32). A token can then differ only where its uniform lands within that distance of a CDF
  boundary (or, for greedy, where the top two logits tie within it): rare in fp32, more frequent in bf16.
- Unseeded requests draw a seed from the engine's `random.Random(seed)`: reproducible for the same engine
  and the same sequence of calls.

Log-probs follow the convention in `engine.py` (the sampled distribution after temperature, top-k, top-p).

Shared weights (a trainer in the same process): a weight stream whose `views` attribute is true hands out
tensors that may be views of the trainer's live parameters (`WeightExport(views=True)`). The engine then
*adopts* each tensor (its parameter becomes that tensor, no copy; the copy it held is freed) instead of copying
it, where shape, dtype and device match; any other tensor is copied as usual. Contract: the trainer modifies
those tensors only between a `generate` and the next `load_weights` (the training loop pauses the scheduler
while it trains). The engine checks it: each adopted tensor's in-place version counter is recorded at load,
and `generate` raises `StaleWeights` if the trainer has modified one since (an optimizer step whose weights
were not yet loaded under a new policy version), so no generation is labelled with a version it was not
produced by. While weights are shared, `sleep`/`wake_up` only set a flag (the memory is the trainer's).
"""
from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from p2o.rollout.batching import Sequence, check_prompt, expand, regroup
from p2o.rollout.engine import EngineAsleep, Generation, GenerationRequest, WeightBucket
from p2o.rollout.kv import PaddedKV, supports_refill
from p2o.rollout.sampling import process_logits, sample
from p2o.rollout.stopping import StopChecker, eos_token_ids
from p2o.rollout.weights import HFWeightLoader, normalize_name, tensor_bytes

log = logging.getLogger(__name__)


class StaleWeights(RuntimeError):
    """The trainer modified weights the engine shares since they were loaded (a mid-update policy)."""


@dataclass
class _Adopted:
    """A stream tensor the engine's parameter `name` now is, and its in-place version counter at load."""

    name: str
    tensor: torch.Tensor
    version: int


@dataclass
class _Row:
    """A sequence being decoded."""

    seq: Sequence
    checker: StopChecker
    generator: torch.Generator
    response: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class HFEngine:
    """`RolloutEngine` over a transformers causal LM. Not thread-safe: one caller at a time (the scheduler)."""

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 64, seed: int = 0,
                 max_prompt_tokens: int | None = None, refill: bool = True):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: got {max_batch_size}; expected >= 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.refill = refill and supports_refill(model.config)
        self.eos_ids = eos_token_ids(tokenizer, model.config, getattr(model, "generation_config", None))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.pad_id = int(pad)
        self.policy_version = 0
        self._rng = random.Random(seed)
        self._sleeping = False
        self._device = next(model.parameters()).device
        self._loader = HFWeightLoader(model)
        self._adopted: dict[str, _Adopted] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                        **kwargs: Any) -> HFEngine:
        """Load model + tokenizer from an HF directory (see `p2o.models.resolve_model_dir` for named models)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory '{path}': no config.json")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, tokenizer, **kwargs)

    # ------------------------------------------------------------------------------------------ protocol
    @property
    def is_sleeping(self) -> bool:
        return self._sleeping

    @property
    def shared_parameters(self) -> list[str]:
        """Names of the parameters that are adopted stream tensors (views of a trainer's weights)."""
        return sorted(self._adopted)

    def sleep(self) -> None:
        """Move the weights to host memory when on an accelerator (a flag only on CPU or with shared weights)."""
        if self._device.type != "cpu" and not self._adopted:
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self._sleeping = True

    def wake_up(self) -> None:
        if self._device.type != "cpu" and not self._adopted:
            self.model.to(self._device)
        self._sleeping = False

    def load_weights(self, bucket_stream: Iterator[WeightBucket], version: int) -> None:
        """Load the HF-named stream (partial updates allowed), then set the version: copied into the model in
        place, or adopted when the stream says `views` (see the module docstring)."""
        if version < self.policy_version:
            raise ValueError(f"load_weights: version {version} is older than the loaded {self.policy_version}")
        if getattr(bucket_stream, "views", False):
            tensors, nbytes, adopted = self._adopt(bucket_stream)
            log.info("loaded %d tensors (%d adopted, %.1f MB copied) -> policy version %d", tensors, adopted,
                     nbytes / 1e6, version)
        else:
            cov = self._loader.load(self._unshare(bucket_stream))
            log.info("loaded %d tensors (%.1f MB) -> policy version %d", cov.tensors, cov.bytes / 1e6, version)
        self.policy_version = version

    @torch.no_grad()
    def _adopt(self, stream: Iterator[WeightBucket]) -> tuple[int, int, int]:
        """Make each parameter the stream's tensor where shape, dtype and device allow; else copy (a fresh
        tensor, never into a tensor adopted earlier). Returns (tensors, bytes copied, tensors adopted)."""
        tensors = nbytes = adopted = 0
        for bucket in stream:
            for raw_name, tensor in bucket:
                owner, target = self._loader.target(raw_name, tensor)
                if tensor.dtype == target.dtype and tensor.device == target.device:
                    target.data = tensor.detach()
                    self._adopted[owner] = _Adopted(owner, tensor, tensor._version)
                    adopted += 1
                else:
                    target.data = tensor.to(device=target.device, dtype=target.dtype, copy=True)
                    self._adopted.pop(owner, None)
                    nbytes += tensor_bytes(tensor)
                tensors += 1
        return tensors, nbytes, adopted

    def _unshare(self, stream: Iterator[WeightBucket]) -> Iterator[WeightBucket]:
        """Give the engine private copies of adopted parameters the stream is about to write, so that copying
        a stream into the model never writes into a trainer's weights."""
        for bucket in stream:
            for raw_name, _ in bucket:
                owner = self._loader.canonical.get(normalize_name(raw_name))
                if owner in self._adopted:
                    param = self._loader.params[owner]
                    param.data = param.data.clone()
                    del self._adopted[owner]
            yield bucket

    def check_weights(self) -> None:
        """Raise `StaleWeights` if the trainer modified an adopted tensor since it was loaded."""
        for a in self._adopted.values():
            if a.tensor._version != a.version:
                raise StaleWeights(f"the trainer modified '{a.name}' after it was loaded at policy version "
                                   f"{self.policy_version}; load the new weights (load_weights) before generating")

    @torch.inference_mode()
    def generate(self, requests: list[GenerationRequest]) -> list[list[Generation]]:
        if self._sleeping:
            raise EngineAsleep("HFEngine.generate called while asleep; call wake_up() first")
        self.check_weights()
        vocab = self.model.config.get_text_config(decoder=True).vocab_size
        for req in requests:
            check_prompt(req, self.max_prompt_tokens, vocab)
        seqs = sorted(expand(requests, self._rng), key=lambda s: len(s.prompt_ids))
        results: dict[tuple[int, int], Generation] = {}
        if self.refill:
            self._decode(seqs, results)
        else:
            for start in range(0, len(seqs), self.max_batch_size):
                self._decode(seqs[start:start + self.max_batch_size], results)
        return regroup(requests, results)

    # ------------------------------------------------------------------------------------------ decoding
    def _decode(self, pending: list[Sequence], results: dict[tuple[int, int], Generation]) -> None:
        """Decode `pending` in slots of max_batch_size, refilling freed slots when `self.refill`."""
        pending = list(pending)
        rows: list[_Row] = []
        kv: PaddedKV | None = None
        logits: torch.Tensor | None = None
        while pending or rows:
            for s in [s for s in pending if s.cancelled]:  # never started: nothing to decode
                results[(s.request_index, s.sample_index)] = Generation(s.prompt_ids, [], [], "", "cancelled",
                                                                        self.policy_version)
            pending = [s for s in pending if not s.cancelled]
            if not pending and not rows:
                break
            free = self.max_batch_size - len(rows)
            if pending and free > 0 and (self.refill or not rows):
                new, pending = pending[:free], pending[free:]
                new_rows = [self._row(s) for s in new]
                new_kv, new_logits = self._prefill(new)
                if kv is None:
                    kv, logits = new_kv, new_logits
                else:
                    kv.merge(new_kv)
                    logits = torch.cat([logits, new_logits], dim=0)
                rows.extend(new_rows)
            assert kv is not None and logits is not None
            tokens, lps = self._sample(rows, logits)
            keep: list[int] = []
            for i, row in enumerate(rows):
                row.response.append(int(tokens[i]))
                row.logprobs.append(float(lps[i]))
                status = row.checker.check(row.response)
                if status.finished or row.seq.cancelled:
                    reason = status.reason if status.finished else "cancelled"
                    results[(row.seq.request_index, row.seq.sample_index)] = self._finish(row, reason)
                else:
                    keep.append(i)
            if len(keep) < len(rows):
                rows = [rows[i] for i in keep]
                if not rows:
                    kv, logits = None, None
                    continue
                idx = torch.tensor(keep, dtype=torch.long)
                kv.select(idx)
                tokens = tokens[idx.to(tokens.device)]
            logits = self._step(kv, tokens)

    def _row(self, seq: Sequence) -> _Row:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seq.seed)
        checker = StopChecker(self.tokenizer, self.eos_ids, seq.params.stop, seq.params.max_new_tokens)
        return _Row(seq, checker, gen)

    def _prefill(self, seqs: list[Sequence]) -> tuple[PaddedKV, torch.Tensor]:
        """KV cache and last-position logits [len(seqs), V] for `seqs`. Each distinct prompt is run once and its
        cache rows copied to the sequences that share it (a GRPO group's n samples share one prompt)."""
        from transformers import DynamicCache

        first: dict[tuple[int, ...], int] = {}
        for s in seqs:
            first.setdefault(tuple(s.prompt_ids), len(first))
        prompts = list(first)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        kv, logits = PaddedKV(cache, mask), out.logits[:, -1, :].float()
        if len(prompts) < len(seqs):
            rows = torch.tensor([first[tuple(s.prompt_ids)] for s in seqs], dtype=torch.long)
            kv.select(rows)
            logits = logits[rows.to(logits.device)]
        return kv, logits

    def _step(self, kv: PaddedKV, tokens: torch.Tensor) -> torch.Tensor:
        mask, positions = kv.step_inputs()
        out = self.model(input_ids=tokens[:, None].to(self._device), attention_mask=mask, position_ids=positions,
                         past_key_values=kv.cache, use_cache=True, logits_to_keep=1)   # the cache grows in place
        kv.append_step()
        return out.logits[:, -1, :].float()

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = logits.device
        temperature = torch.tensor([r.seq.params.temperature for r in rows], device=dev)
        top_k = torch.tensor([r.seq.params.top_k for r in rows], device=dev)
        top_p = torch.tensor([r.seq.params.top_p for r in rows], device=dev)
        uniforms = torch.cat([torch.rand(1, generator=r.generator) for r in rows]).to(dev)
        logp = process_logits(logits, temperature, top_k, top_p)
        tokens, lps = sample(logp, temperature <= 0, uniforms)
        return tokens.cpu(), lps.cpu()

    def _finish(self, row: _Row, reason: str | None) -> Generation:
        return Generation(prompt_ids=row.seq.prompt_ids, response_ids=row.response, logprobs=row.logprobs,
                          text=row.checker.text(row.response), finish_reason=reason or "length",
                          policy_version=self.policy_version)
