"""What `p2o eval --model` accepts, resolved to an HF model directory an engine can load.

- an HF directory (config.json + weights + tokenizer), e.g. one written by `p2o convert megatron-to-hf`;
- a named embedded model ('smollm2-135m', 'tiny-qwen3'; see `p2o.models`);
- a Megatron-Core distributed checkpoint, converted on the fly with `megatron_bridge.convert.megatron_to_hf`:
  a `p2o convert hf-to-megatron` output (`model/` + `hf_config/`), a training checkpoint
  (`checkpoints/step_N/` holding `policy/`) or a bare dist-checkpoint folder (`.metadata`). The HF config and
  tokenizer come from its `hf_config/`, else from `hf_config` (the model the run started from: an HF
  directory or an embedded name).

A conversion goes to `convert_dir` with a `p2o_source.json` naming the checkpoint; it is reused only for the
same checkpoint (path and metadata time), so a rerun does not convert again.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from p2o.atomic import atomic_write_json
from p2o.config import EMBEDDED_MODEL_SHAPES

log = logging.getLogger(__name__)

SOURCE_FILE = "p2o_source.json"


def megatron_model_dir(path: Path) -> Path | None:
    """The dist-checkpoint folder inside a Megatron checkpoint (`model/`, `policy/` or the folder itself)."""
    for candidate in (path / "model", path / "policy", path):
        if (candidate / ".metadata").is_file():
            return candidate
    return None


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("*.bin"))


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def convert_megatron(path: Path, model_dir: Path, config_dir: Path, convert_dir: Path) -> Path:
    """HF directory for the Megatron checkpoint `path` (converted into `convert_dir`, or reused from it)."""
    if not (config_dir / "config.json").is_file():
        raise ValueError(f"--model {path}: a Megatron checkpoint without hf_config/; pass --hf-config with the HF "
                         f"model directory it was trained from (config.json + tokenizer)")
    source = {"megatron": str(model_dir.resolve()), "metadata_mtime_ns": (model_dir / ".metadata").stat().st_mtime_ns,
              "hf_config": str(config_dir.resolve())}
    marker = convert_dir / SOURCE_FILE
    if _has_weights(convert_dir) and _read_marker(marker) == source:
        log.info("reusing the HF conversion of %s in %s", path, convert_dir)
        return convert_dir
    from megatron_bridge.convert import megatron_to_hf

    shutil.rmtree(convert_dir, ignore_errors=True)
    log.info("converting Megatron checkpoint %s to HF in %s", path, convert_dir)
    megatron_to_hf(model_dir, convert_dir, hf_config=config_dir)
    atomic_write_json(marker, source, indent=2)  # written last: marks the conversion complete
    return convert_dir


def resolve_checkpoint(model: str, cache_dir: str = "~/.cache/p2o", init_seed: int = 1234,
                       hf_config: str | Path | None = None, convert_dir: str | Path | None = None) -> Path:
    """The HF directory for `model`; raises FileNotFoundError/ValueError naming what was expected."""
    from p2o.models import resolve_model_dir

    if model in EMBEDDED_MODEL_SHAPES:
        return Path(resolve_model_dir(model, cache_dir=cache_dir, init_seed=init_seed))
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--model {model}: no such directory (expected an HF model directory, a Megatron "
                                f"checkpoint or one of {', '.join(EMBEDDED_MODEL_SHAPES)})")
    mdir = megatron_model_dir(path) if path.is_dir() else None
    if mdir is not None:
        if convert_dir is None:
            raise ValueError(f"--model {model}: a Megatron checkpoint needs a folder to convert it into")
        if (path / "hf_config" / "config.json").is_file():
            config_dir = path / "hf_config"
        elif hf_config is not None:
            config_dir = Path(resolve_model_dir(str(hf_config), cache_dir=cache_dir, init_seed=init_seed))
        else:
            config_dir = path / "hf_config"  # missing: convert_megatron names what to pass
        return convert_megatron(path, mdir, config_dir, Path(convert_dir).expanduser())
    if (path / "latest_checkpointed_iteration.txt").is_file():
        raise ValueError(f"--model {model}: a Megatron-LM training checkpoint (iter_* folders) is not supported; "
                         "convert it to an HF directory first")
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {model}: no config.json; expected an HF model directory with weights and tokenizer, "
                         "or a Megatron dist checkpoint")
    if not _has_weights(path):
        raise ValueError(f"--model {model}: no *.safetensors / *.bin weights next to config.json")
    return path
