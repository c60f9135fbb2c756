"""Fixtures of the rollout tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def hd32_model_dir() -> Path:
    """The tiny Qwen3 with head_dim 32 (vLLM's CPU attention needs head_dim >= 32)."""
    from p2o.models import resolve_model_dir
    from tests.conftest import CACHE_DIR

    return resolve_model_dir("tiny-qwen3-hd32", cache_dir=CACHE_DIR)


@pytest.fixture(scope="session")
def hd32_policy_dir(hd32_model_dir: Path) -> Path:
    """`hd32_model_dir` fine-tuned to answer \\boxed{7} when the prompt says "carefully", else \\boxed{3}
    (tests/p2o/gepa/tiny_policy.py), cached per machine."""
    from tests.conftest import CACHE_DIR
    from tests.p2o.rollout.helpers import cached_tiny_policy_for

    return cached_tiny_policy_for(hd32_model_dir, CACHE_DIR)
