"""Per-row token sampling with the behaviour log-probs of the distribution actually sampled from.

Every row of a decode batch carries its own temperature, top-k, top-p and random stream, so one batch can
mix greedy evaluation with temperature-1 training rollouts. Randomness is one uniform number per row and
step, drawn from that row's own `torch.Generator` (seeded per sequence, see `sequence_seed`), and turned
into a token by inverse-CDF sampling. A row's draws therefore depend only on its seed and step, never on
which other rows share the batch.

    proc = process_logits(logits, temperature, top_k, top_p)   # [B, V] log-probs sampled from
    tokens, logprobs = sample(proc, greedy, uniforms)           # [B], [B]
"""
from __future__ import annotations

import hashlib

import torch


def sequence_seed(seed: int, index: int) -> int:
    """A 63-bit seed for response `index` of a request with `seed` (stable across runs and platforms)."""
    digest = hashlib.sha256(f"p2o-sample:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def process_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                   top_p: torch.Tensor) -> torch.Tensor:
    """Log-probs [B, V] (fp32) of the distribution each row samples from.

    logits [B, V] (any float dtype); temperature [B] (0 = greedy: plain log_softmax(logits), no truncation);
    top_k [B] int (0 = off); top_p [B] in (0, 1] (1 = off). Tokens outside the top-k / top-p set get -inf and
    the rest is renormalised. Top-p keeps the smallest prefix of the sorted distribution whose mass reaches
    top_p (the most likely token is always kept); top-k is applied first, as in vLLM and HF.
    """
    logits = logits.float()
    greedy = temperature <= 0
    scale = torch.where(greedy, torch.ones_like(temperature), temperature).float()
    scaled = logits / scale[:, None]                                   # [B, V]
    truncate = (~greedy) & ((top_k > 0) | (top_p < 1))
    if bool(truncate.any()):
        rows = truncate.nonzero(as_tuple=True)[0]
        sub = scaled[rows]                                             # [R, V]
        sorted_vals, order = sub.sort(dim=-1, descending=True)         # [R, V]
        rank = torch.arange(sub.shape[-1], device=sub.device)[None, :]
        k = top_k[rows].to(sub.device)
        drop = (k[:, None] > 0) & (rank >= k[:, None])                 # top-k first
        sorted_vals = sorted_vals.masked_fill(drop, float("-inf"))
        probs = sorted_vals.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs                     # mass of strictly more likely tokens
        drop = drop | (mass_before >= top_p[rows].to(sub.device)[:, None].float())
        drop[:, 0] = False
        sorted_vals = sorted_vals.masked_fill(drop, float("-inf"))
        scaled = scaled.clone()
        scaled[rows] = torch.full_like(sub, float("-inf")).scatter(-1, order, sorted_vals)
    return scaled.log_softmax(dim=-1)


def sample(logp: torch.Tensor, greedy: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [B] (int64) and their log-probs [B] (fp32) from processed log-probs [B, V].

    Greedy rows take the argmax; the others invert the CDF at their uniform in [0, 1) (`uniforms` [B]).
    """
    greedy = greedy.to(logp.device)
    if bool(greedy.all()):
        tokens = logp.argmax(dim=-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    tokens = _inverse_cdf(logp.exp(), uniforms.to(logp.device))
    # float rounding at the top end of the CDF can land on a zero-mass tail token: fall back to the argmax
    fix = greedy | torch.isinf(logp.gather(-1, tokens[:, None]).squeeze(-1))
    if bool(fix.any()):
        tokens = torch.where(fix, logp.argmax(dim=-1), tokens)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Smallest index i with cdf[i] > u * total, per row of probs [B, V]; two-level (block sums, then one
    block) so no full-vocabulary cumsum is needed."""
    b, v = probs.shape
    nb = -(-v // block)
    padded = torch.nn.functional.pad(probs, (0, nb * block - v)).view(b, nb, block)   # [B, NB, BLK]
    block_cdf = padded.sum(dim=-1).cumsum(dim=-1)                                       # [B, NB]
    target = (uniforms.to(probs.dtype) * block_cdf[:, -1]).unsqueeze(-1)                # [B, 1]
    blk = torch.searchsorted(block_cdf, target, right=True).clamp_(max=nb - 1)           # [B, 1]
    before = torch.where(blk > 0, block_cdf.gather(-1, (blk - 1).clamp(min=0)), torch.zeros_like(target))
    inner = padded[torch.arange(b, device=probs.device), blk.squeeze(-1)].cumsum(dim=-1) + before  # [B, BLK]
    pos = torch.searchsorted(inner, target, right=True).clamp_(max=block - 1)
    return (blk * block + pos).squeeze(-1).clamp_(max=v - 1)
