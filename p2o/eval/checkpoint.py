"""What `p2o eval --model` accepts, resolved to an HF model directory an engine can load.

- an HF directory (config.json + weights + tokenizer), e.g. one written by `p2o convert` or a hub snapshot;
- a named embedded model ('smollm2-135m', 'tiny-qwen3'; see `p2o.models`).

Megatron-Core checkpoints (a folder with `latest_checkpointed_iteration.txt`, `iter_*` folders or a
distributed-checkpoint `.metadata`) are recognised and refused with a message: converting them on the fly
needs a Megatron -> HF exporter in `megatron_bridge`, which does not exist yet; convert them first.
"""
from __future__ import annotations

from pathlib import Path

from p2o.config import EMBEDDED_MODEL_SHAPES


def is_megatron_checkpoint(path: Path) -> bool:
    """A Megatron-Core checkpoint folder (legacy or distributed format)."""
    return path.is_dir() and ((path / "latest_checkpointed_iteration.txt").is_file() or (path / ".metadata").is_file()
                              or any(p.is_dir() and p.name.startswith("iter_") for p in path.iterdir()))


def resolve_checkpoint(model: str, cache_dir: str = "~/.cache/p2o", init_seed: int = 1234) -> Path:
    """The HF directory for `model`; raises FileNotFoundError/ValueError naming what was expected."""
    from p2o.models import resolve_model_dir

    if model in EMBEDDED_MODEL_SHAPES:
        return Path(resolve_model_dir(model, cache_dir=cache_dir, init_seed=init_seed))
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--model {model}: no such directory (expected an HF model directory or one of "
                                f"{', '.join(EMBEDDED_MODEL_SHAPES)})")
    if is_megatron_checkpoint(path):
        raise ValueError(f"--model {model}: a Megatron-Core checkpoint; convert it to an HF directory first "
                         "(on-the-fly conversion is not available yet)")
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {model}: no config.json; expected an HF model directory with weights and tokenizer")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ValueError(f"--model {model}: no *.safetensors / *.bin weights next to config.json")
    return path
