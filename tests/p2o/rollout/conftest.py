"""Fixtures of the rollout tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)
