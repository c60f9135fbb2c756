"""A real tiny policy whose greedy answer depends on the template, for the end-to-end GEPA test.

The seeded random tiny Qwen3 (`tiny_model_dir`) is fine-tuned for a few hundred Adam steps on chat
prompts rendered exactly as the gateway renders them, so that it answers `\\boxed{7}` when the user turn
contains the word MAGIC and `\\boxed{3}` otherwise. Problems whose gold answer is 7 are then solved only by
templates that contain MAGIC, the others only by templates that do not (the empty seed included): a
search has something to find and set cover has two groups to cover.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from p2o.prompts import messages, render

MAGIC = "carefully"
WORDS = ["think", "check", "the", "answer", "step", "first", "units", "brief", "verify", "sum", "work", "now",
         "slowly", "twice", "again", "and", "then", "compute", "value", "final", "be", "precise"]


def question(i: int) -> str:
    return f"Problem {i}: find the hidden value of item {i % 10}."


def random_template(rng: random.Random, magic: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(0 if not magic else 1, 6))]
    if magic:
        words.insert(rng.randint(0, len(words)), MAGIC)
    return " ".join(words).capitalize() + ("." if words else "")


def target(template: str) -> str:
    return "\\boxed{7}" if MAGIC in template.lower() else "\\boxed{3}"


def train_tiny_policy(model_dir: Path, out_dir: Path, steps: int = 150, batch_size: int = 8, seed: int = 0) -> Path:
    """Fine-tune the tiny model (fp32, CPU) and save it with its tokenizer to `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    eos = tok.eos_token or ""

    def example() -> tuple[list[int], int]:
        magic = rng.random() < 0.5
        template = "" if (not magic and rng.random() < 0.25) else random_template(rng, magic)
        prompt = render(tok, messages(question(rng.randrange(1000)), template))
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tok(target(template) + eos, add_special_tokens=False)["input_ids"]
        return p_ids + t_ids, len(p_ids)

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for _ in range(steps):
        batch = [example() for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows, positions, labels = [], [], []
        for r, (ids, n_prompt) in enumerate(batch):
            input_ids[r, :len(ids)] = torch.tensor(ids)
            mask[r, :len(ids)] = 1
            for t in range(n_prompt, len(ids)):  # position t-1 predicts token t
                rows.append(r)
                positions.append(t - 1)
                labels.append(ids[t])
        hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [B, T, H]
        logits = model.lm_head(hidden[rows, positions])  # [N, V]: only the answer positions
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


TRAINING_VERSION = "v1-steps150-b8-lr3e-3-seed0"


def cached_tiny_policy(model_dir: Path, cache_root: Path) -> Path:
    """`train_tiny_policy` once per machine: the result is kept under `cache_root` (renamed into place)."""
    final = cache_root / f"gepa-tiny-policy-{TRAINING_VERSION}"
    if (final / "config.json").is_file():
        return final
    tmp = cache_root / f".{final.name}.{random.getrandbits(32):08x}.tmp"
    train_tiny_policy(model_dir, tmp)
    try:
        tmp.rename(final)
    except OSError:  # another worker got there first
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return final
