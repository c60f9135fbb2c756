"""Model families; importing this package registers their bridges (one file per family)."""
from megatron_bridge.models import llama, qwen3  # noqa: F401
