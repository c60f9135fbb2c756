"""Helpers of the rollout tests: load the tiny model, build engines, perturbed 'trained' weights."""
from __future__ import annotations

from pathlib import Path

import torch


def load_model(model_dir: Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def make_engine(model_dir: Path, tokenizer, **kwargs):
    from p2o.rollout.hf_engine import HFEngine
    return HFEngine(load_model(model_dir), tokenizer, **kwargs)


def perturbed_state(model_dir: Path, seed: int = 1, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """The tiny model's parameters plus seeded noise: 'new weights' a trainer could have produced."""
    g = torch.Generator().manual_seed(seed)
    model = load_model(model_dir)
    return {n: p.detach() + scale * p.detach().std() * torch.randn(p.shape, generator=g)
            for n, p in model.named_parameters()}


def prompt_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


PROMPTS = ["What is 2 + 3?", "Compute 12 * 7 and explain.", "hi", "The quick brown fox jumps over the lazy dog " * 3]
