"""Console logging for the `p2o` commands: P2O's own records, and third-party noise quiet unless asked for.

Megatron-Core lists every parameter of every gradient bucket at INFO and warns that Transformer Engine and
Apex are missing (they are on CPU, by design); vLLM logs its engine set-up at INFO and, on every weight
reload, one warning per module without weights of its own; transformers and tqdm draw progress bars. By
default (`quiet`) those loggers show warnings and errors only, the known fallback warnings are filtered (by
message), vLLM's processes log at WARNING, and progress bars are drawn only when stderr is a terminal.
`p2o --verbose` (or `p2o train --verbose`, or P2O_VERBOSE=1) leaves all of it as the libraries set it.

The settings go through environment variables too, so the processes a command starts (torchrun ranks, the
GEPA service, vLLM's engine core) inherit them. Call `configure_logging` before Megatron, vLLM or
transformers is imported: their warnings fire and their settings are read at import time.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings

VERBOSE_ENV = "P2O_VERBOSE"

# Third-party loggers whose INFO records are set-up chatter in a training log (warnings still show).
QUIET_LOGGERS: tuple[str, ...] = ("megatron", "megatron.core", "vllm", "transformers", "torch.distributed",
                                  "httpx", "httpcore", "uvicorn.access")

# Known Python warnings that say nothing actionable on a supported set-up: (start of the message, category).
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    ("Transformer Engine and Apex are not installed", UserWarning),  # Megatron-Core on CPU: torch fallbacks
    ("Apex is not installed", UserWarning),
    ("full scope is deprecated", UserWarning),  # Megatron-Core's own default for cuda_graph_scope
    ("`torch.distributed.reduce_op` is deprecated", FutureWarning),  # vLLM's Triton dispatcher scanning torch
)

# Known log records at WARNING that are expected on every run: (logger, regex their message matches).
# vLLM's layerwise reload warns for modules that hold no checkpoint tensor of their own (the rotary cache; an LM
# head tied to the embedding), on every weight update; on CPU, vLLM explains the settings it derives from
# enforce_eager and the missing triton-cpu, and that it leaves the thread count as bound. (Its advice to preload
# tcmalloc/iomp stays: it is actionable.)
QUIET_RECORDS: tuple[tuple[str, str], ...] = (
    ("vllm.model_executor.model_loader.reload.layerwise", r"^(\w*RotaryEmbedding|ParallelLMHead): Failed to load weights"),
    ("vllm.triton_utils.importing", r"Triton is installed, but doesn't include CPU backend"),
    ("vllm.config.vllm", r"^(Enforce eager set|Inductor compilation was disabled|Model Runner V2 requires Triton)"),
    ("vllm.platforms.cpu", r"^(Triton is not installed\. triton-cpu is expected|Reset SSM cache type)"),
    ("vllm.v1.worker.cpu_worker", r"torch\.set_num_threads` after the thread binding"),
)

# Environment for the library code in this process and in every process it starts.
QUIET_ENV: dict[str, str] = {
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "warning",
}


def verbose_requested(flag: bool = False) -> bool:
    """True when `--verbose` was given or P2O_VERBOSE is set to a true value (a parent command's choice)."""
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def progress_enabled(requested: bool = True) -> bool:
    """Draw a progress bar: when asked (`logging.progress`) and stderr is a terminal (frames of a redrawn bar in a
    log file are noise), or always under --verbose."""
    if not requested:
        return False
    if verbose_requested():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(level: int = logging.INFO, verbose: bool = False) -> bool:
    """Set up the root handler at `level` and, unless verbose, quiet the third-party noise. Returns whether the
    run is verbose (also at `level` DEBUG). Idempotent; explicit user settings of the environment variables above
    win."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    verbose = verbose_requested(verbose) or level <= logging.DEBUG
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return True
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if not progress_enabled():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:
            import transformers.utils.logging as hf_logging

            hf_logging.disable_progress_bar()
    quiet = max(level, logging.WARNING)
    # vLLM configures its "vllm" logger from VLLM_LOGGING_LEVEL when imported; this covers an import before.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    for name, pattern in QUIET_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropKnown(pattern))
    return False


class _DropKnown(logging.Filter):
    """Drops the records of one logger whose formatted message matches `pattern` (searched)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())
