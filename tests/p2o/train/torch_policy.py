"""A single-process `PolicyBackend` over a transformers model, for unit tests of the loop's pieces.

It implements the same contract as the Megatron backend (packed per-token layout, caller-supplied loss
already divided by the global normaliser, log-probs at `temperature`) with plain torch: padded batches, one AdamW
step per call.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from p2o.train.policy import SequenceBatch, StepMetrics


class TorchPolicy:
    def __init__(self, model_dir, lr: float = 1e-3, seed: int = 0, temperature: float = 1.0):
        torch.manual_seed(seed)
        self.temperature = temperature
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        self.calls: list[SequenceBatch] = []

    def _logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        seqs = [p + r for p, r in zip(batch.prompt_ids, batch.response_ids, strict=False)]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
        attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        logits = self.model(input_ids=ids, attention_mask=attn).logits.float()
        logp = torch.log_softmax(logits / self.temperature, -1)
        out = []
        for i, (p, r) in enumerate(zip(batch.prompt_ids, batch.response_ids, strict=False)):
            pos = torch.arange(len(p) - 1, len(p) + len(r) - 1)
            out.append(logp[i, pos, torch.tensor(r)])
        return torch.cat(out)

    def logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        with torch.no_grad():
            return self._logprobs(batch)

    def dual_logprobs(self, batch_x: SequenceBatch, batch_xz: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch_x.response_ids != batch_xz.response_ids:
            raise ValueError("dual_logprobs: batch_x and batch_xz must hold the same response_ids (row for row)")
        return self.logprobs(batch_x), self.logprobs(batch_xz)

    def train_step(self, batch, token_inputs, loss_fn) -> StepMetrics:
        self.calls.append(batch)
        self.opt.zero_grad()
        loss, metrics = loss_fn(self._logprobs(batch), token_inputs)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1e9)
        self.last_grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}
        self.opt.step()
        return StepMetrics(float(loss), float(norm), 1e-3, batch.num_response_tokens, metrics)

    def export_weights(self, bucket_bytes):
        yield [(n, t.detach()) for n, t in self.model.state_dict().items()]
