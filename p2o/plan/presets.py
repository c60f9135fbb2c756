"""Model shapes the planner knows by name, and shapes read from an HF config.json.

A `ModelShape` is everything the memory / FLOP arithmetic needs: no weights, no torch. The Qwen3 presets
are the published `config.json` values of the Qwen/Qwen3-* checkpoints (dense 0.6B..32B, the MoE 30B-A3B);
Llama-3.1-8B is there for comparison with published GRPO throughput anchors; `smollm2-135m` and
`tiny-qwen3` are the embedded models this repository runs on CPU.

    shape = load_model_shape("Qwen3-8B")            # a preset (case-insensitive)
    shape = load_model_shape("path/to/config.json")  # or an HF model dir
    shape.num_params, shape.num_active_params
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path


class PlanError(ValueError):
    """Bad planner input; the message names the field (or file) and what was expected."""

    def __init__(self, field: str, value: object, expected: str):
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"{field}: got {value!r}; expected {expected}")


@dataclass(frozen=True)
class ModelShape:
    """Decoder-only transformer shape (Llama / Qwen3 family: RMSNorm, GQA, SwiGLU, RoPE, no biases)."""

    name: str
    hidden: int
    """h: residual width."""
    ffn: int
    """f: SwiGLU intermediate width of a dense MLP (per expert for MoE: `moe_ffn`)."""
    layers: int
    """L: transformer layers."""
    heads: int
    """a: query heads."""
    kv_heads: int
    """g: key/value heads (GQA groups)."""
    head_dim: int
    """d: per-head width (a * d need not equal h, as in Qwen3)."""
    vocab: int
    """V: vocabulary size (unpadded)."""
    tied: bool
    """LM head shares the input embedding."""
    qk_norm: bool = False
    """Per-head RMSNorm on q and k (Qwen3)."""
    experts: int = 0
    """MoE experts per layer (0: dense)."""
    experts_per_token: int = 0
    """Routed experts per token (top-k)."""
    moe_ffn: int = 0
    """Intermediate width of one expert."""

    def __post_init__(self) -> None:
        for key in ("hidden", "ffn", "layers", "heads", "kv_heads", "head_dim", "vocab"):
            if getattr(self, key) < 1:
                raise PlanError(f"model.{key}", getattr(self, key), "a positive integer")
        if self.heads % self.kv_heads:
            raise PlanError("model.kv_heads", self.kv_heads, f"a divisor of heads = {self.heads}")
        if self.experts and not (0 < self.experts_per_token <= self.experts and self.moe_ffn > 0):
            raise PlanError("model.experts_per_token", self.experts_per_token,
                            f"1..experts = {self.experts} with a positive moe_ffn")

    # ---- parameter counts (elements) -------------------------------------------------------------
    @property
    def attn_params(self) -> int:
        """Per layer: q [h, a d], k and v [h, g d], o [a d, h] (+ q/k norm weights [d] each)."""
        a, g, d, h = self.heads, self.kv_heads, self.head_dim, self.hidden
        return h * (a + 2 * g) * d + a * d * h + (2 * d if self.qk_norm else 0)

    @property
    def mlp_params(self) -> int:
        """Per layer: gate and up [h, f], down [f, h]; MoE: every expert plus the router [h, E]."""
        if self.experts:
            return self.experts * 3 * self.hidden * self.moe_ffn + self.hidden * self.experts
        return 3 * self.hidden * self.ffn

    @property
    def active_mlp_params(self) -> int:
        """MLP parameters one token touches (dense: all; MoE: top-k experts and the router)."""
        if self.experts:
            return self.experts_per_token * 3 * self.hidden * self.moe_ffn + self.hidden * self.experts
        return self.mlp_params

    @property
    def layer_params(self) -> int:
        """One transformer layer including its two RMSNorm weights [h]."""
        return self.attn_params + self.mlp_params + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def num_params(self) -> int:
        """All parameters (embedding counted once when tied, final norm included)."""
        head = 0 if self.tied else self.embedding_params
        return self.layers * self.layer_params + self.embedding_params + head + self.hidden

    @property
    def num_active_params(self) -> int:
        """Parameters a token's forward multiplies by (N in 2N / 6N FLOPs); excludes the embedding lookup."""
        per_layer = self.attn_params + self.active_mlp_params + 2 * self.hidden
        return self.layers * per_layer + self.embedding_params + self.hidden  # LM head is a matmul

    @property
    def kv_bytes_per_token_bf16(self) -> int:
        """KV cache of one token in bf16 over all layers: L x 2 (K, V) x g x d x 2 bytes."""
        return self.layers * 2 * self.kv_heads * self.head_dim * 2

    def with_name(self, name: str) -> ModelShape:
        return replace(self, name=name)


def _qwen3(name: str, h: int, f: int, layers: int, heads: int, kv: int, tied: bool, **moe: int) -> ModelShape:
    return ModelShape(name, hidden=h, ffn=f, layers=layers, heads=heads, kv_heads=kv, head_dim=128,
                      vocab=151936, tied=tied, qk_norm=True, **moe)


# Published config.json values (huggingface.co/Qwen/<name>/blob/main/config.json).
PRESETS: dict[str, ModelShape] = {m.name: m for m in [
    _qwen3("Qwen3-0.6B", 1024, 3072, 28, 16, 8, tied=True),
    _qwen3("Qwen3-1.7B", 2048, 6144, 28, 16, 8, tied=True),
    _qwen3("Qwen3-4B", 2560, 9728, 36, 32, 8, tied=True),
    _qwen3("Qwen3-8B", 4096, 12288, 36, 32, 8, tied=False),
    _qwen3("Qwen3-14B", 5120, 17408, 40, 40, 8, tied=False),
    _qwen3("Qwen3-32B", 5120, 25600, 64, 64, 8, tied=False),
    _qwen3("Qwen3-30B-A3B", 2048, 6144, 48, 32, 4, tied=False, experts=128, experts_per_token=8, moe_ffn=768),
    ModelShape("Llama-3.1-8B", hidden=4096, ffn=14336, layers=32, heads=32, kv_heads=8, head_dim=128,
               vocab=128256, tied=False),
    ModelShape("smollm2-135m", hidden=576, ffn=1536, layers=30, heads=9, kv_heads=3, head_dim=64,
               vocab=49152, tied=True),
    ModelShape("tiny-qwen3", hidden=64, ffn=128, layers=2, heads=4, kv_heads=2, head_dim=16,
               vocab=49152, tied=True, qk_norm=True),
]}


def shape_from_hf_config(cfg: dict, name: str = "hf-config") -> ModelShape:
    """A `ModelShape` from an HF config dict (Llama / Qwen2 / Qwen3 / Qwen3-MoE / Mistral keys)."""
    def need(key: str) -> int:
        if key not in cfg:
            raise PlanError(f"{name} config key '{key}'", "(missing)", "present in an HF config.json")
        return int(cfg[key])

    heads = need("num_attention_heads")
    hidden = need("hidden_size")
    experts = int(cfg.get("num_experts", cfg.get("num_local_experts", 0)) or 0)
    return ModelShape(
        name=name, hidden=hidden, ffn=need("intermediate_size"), layers=need("num_hidden_layers"),
        heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads), vocab=need("vocab_size"),
        tied=bool(cfg.get("tie_word_embeddings", False)),
        qk_norm=str(cfg.get("model_type", "")).startswith("qwen3"),
        experts=experts, experts_per_token=int(cfg.get("num_experts_per_tok", 0) or 0) if experts else 0,
        moe_ffn=int(cfg.get("moe_intermediate_size", 0) or 0) if experts else 0,
    )


def load_model_shape(model: str) -> ModelShape:
    """A preset name (case-insensitive), an HF model directory, or a config.json path."""
    by_lower = {k.lower(): v for k, v in PRESETS.items()}
    if model.lower() in by_lower:
        return by_lower[model.lower()]
    p = Path(os.path.expanduser(model))
    if p.is_dir():
        p = p / "config.json"
    if p.is_file():
        try:
            cfg = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError("--model", str(p), f"a readable HF config.json ({e})") from e
        if not isinstance(cfg, dict):
            raise PlanError("--model", str(p), "a JSON object (an HF config.json)")
        return shape_from_hf_config(cfg, name=p.parent.name if p.name == "config.json" else p.stem)
    raise PlanError("--model", model, "a preset (" + ", ".join(PRESETS) + "), an HF model dir or a config.json")
