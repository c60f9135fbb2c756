"""TRL's side of `p2o bench vs-trl`: `trl.GRPOTrainer` on the benchmark's work, in lock step with the command.

Runs in its own virtual environment (trl, torch, transformers, accelerate, datasets; no P2O):

    python trl_side.py --problems F.jsonl --model-dir DIR --output-dir D --steps N

The prompts are the rendered chat prompts of the problems file (`prompt_text`, rendered once by P2O's
`prompts.render`), so both sides generate from the same tokens. Settings that make the work identical to
ours: 8 prompts x 4 generations per optimizer step (per-device batch 8, gradient accumulation 4, one
generation per step), at most 64 new tokens, temperature 1.0, top-p 1, top-k 0, lr 1e-6 constant, AdamW
(0.9, 0.999, eps 1e-8, weight decay 0.01), grad-norm clip 1.0, beta 0 (no KL), clip 0.2, `loss_type="dapo"`
(token mean over the step), group-std advantages, one iteration per batch, fp32 (`bf16=False`), CPU.

Each step is held at `on_step_begin` until the command sends `step I`; the `step` record carries the step
wall time (begin to end) and the time spent in `_generate` (tokenise + `model.generate` + decode).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lockstep import commands, emit  # noqa: E402  (standard library only; shared with the command)

_BOXED = re.compile(r"\\boxed\s*\{")
_INTEGER = re.compile(r"[+-]?\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (balanced braces), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i = starts[-1]
    depth, j = 1, i
    while j < len(text):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
        j += 1
    return None


def boxed_integer_reward(text: str, answer: str) -> float:
    """1.0 when the last \\boxed{} holds exactly the gold integer (spaces, '$', thousands commas ignored), else 0.0."""
    inner = last_boxed(text)
    if inner is None:
        return 0.0
    s = inner.strip().strip("$").replace(",", "").replace(" ", "")
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    if not _INTEGER.fullmatch(s) or not _INTEGER.fullmatch(answer.strip()):
        return 0.0
    return 1.0 if int(s) == int(answer.strip()) else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trl_side.py")
    parser.add_argument("--problems", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient-checkpointing", choices=("true", "false"), default="true",
                        help="GRPOConfig.gradient_checkpointing (TRL's default: true)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from p2o.jsonl import read_jsonl

    rows = read_jsonl(args.problems)
    data = Dataset.from_list([{"prompt": r["prompt_text"], "answer": r["answer"]} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    if getattr(model.config, "quantization_config", None):
        raise ValueError(f"{args.model_dir}: has a quantization_config; the benchmark needs plain fp32 weights")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)

    def reward(completions, answer, **_):
        return [boxed_integer_reward(c, a) for c, a in zip(completions, answer, strict=True)]

    config = GRPOConfig(
        output_dir=args.output_dir, use_cpu=True, bf16=False, fp16=False, seed=args.seed, data_seed=args.seed,
        per_device_train_batch_size=8, gradient_accumulation_steps=4, num_generations=4, steps_per_generation=4,
        max_completion_length=64, temperature=1.0, top_p=1.0, top_k=0, learning_rate=1e-6,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-8, max_grad_norm=1.0, beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        num_iterations=1, max_steps=args.steps, shuffle_dataset=False, disable_dropout=True,
        gradient_checkpointing=args.gradient_checkpointing == "true",
        logging_steps=1, report_to=[], save_strategy="no", dataloader_num_workers=0, log_completions=False,
    )

    class TimedGRPOTrainer(GRPOTrainer):
        generate_s = 0.0
        completion_tokens = 0
        rewards: list[float] = []

        def _generate(self, prompts):
            t = time.perf_counter()
            out = super()._generate(prompts)
            TimedGRPOTrainer.generate_s += time.perf_counter() - t
            return out

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            TimedGRPOTrainer.completion_tokens += sum(len(c) for c in completion_ids_list)
            out = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            TimedGRPOTrainer.rewards = out.flatten().tolist()
            return out

    steps = commands()

    class LockStep(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kw):
            emit({"event": "ready", "side": "trl", "load_s": time.perf_counter() - t0})

        def on_step_begin(self, args_, state, control, **kw):
            self.index = next(steps)
            TimedGRPOTrainer.generate_s, TimedGRPOTrainer.completion_tokens = 0.0, 0
            self.t = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            r = TimedGRPOTrainer.rewards
            groups = [r[i:i + 4] for i in range(0, len(r), 4)]  # num_generations consecutive rollouts per prompt
            emit({"event": "step", "side": "trl", "step": self.index, "step_s": time.perf_counter() - self.t,
                  "generate_s": TimedGRPOTrainer.generate_s, "completion_tokens": TimedGRPOTrainer.completion_tokens,
                  "reward_mean": sum(r) / len(r) if r else 0.0,
                  "zero_adv_frac": sum(min(g) == max(g) for g in groups) / len(groups) if groups else 1.0})

    trainer = TimedGRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                               processing_class=tokenizer, callbacks=[LockStep()])
    trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
