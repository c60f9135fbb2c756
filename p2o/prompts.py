"""Prompt construction, used identically for rollouts, the distillation context, GEPA evaluation and benchmarks.

- user(x): `prompt.user_template` with '{question}' replaced by the problem text (`DEFAULT_USER_TEMPLATE`; the
  paper configs use the authors' `AUTHORS_USER_TEMPLATE`).
- T(x, z) = z.strip() + "\\n\\n" + user(x) inside the user turn; an empty template leaves x unchanged.
- Chat formatting goes through the tokenizer's chat template with one explicit thinking convention
  (`model.thinking`): Qwen3-style templates receive `enable_thinking`; templates without the switch are
  rendered as they are.
"""
from __future__ import annotations

from typing import Any

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
DEFAULT_USER_TEMPLATE = "{question} " + INSTRUCTION
"""user(x) by default: the question, then the instruction."""
AUTHORS_USER_TEMPLATE = INSTRUCTION + "\nQuestion: {question}"
"""user(x) of the authors' released code (the instruction, then the question): what the paper configs use."""


def user_text(question: str, user_template: str = DEFAULT_USER_TEMPLATE) -> str:
    """user(x): the user-turn text for a problem (plain replacement, no str.format)."""
    return user_template.replace("{question}", question)


def insert_template(user: str, template: str | None) -> str:
    """T(x, z) on the user text: the template, a blank line, then the original user text."""
    z = (template or "").strip()
    return f"{z}\n\n{user}" if z else user


def messages(question: str, template: str | None = None, user_template: str = DEFAULT_USER_TEMPLATE,
             system: str = "") -> list[dict[str, str]]:
    """Chat messages for T(x, z) (z=None or '' gives the plain prompt x)."""
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": insert_template(user_text(question, user_template), template)})
    return msgs


def chat_template_kwargs(thinking: str) -> dict[str, Any]:
    """Keyword arguments for `apply_chat_template` under the thinking convention ('off' | 'on')."""
    if thinking not in ("off", "on"):
        raise ValueError(f"model.thinking: got {thinking!r}; expected 'off' or 'on'")
    return {"enable_thinking": thinking == "on"}


def render(tokenizer: Any, msgs: list[dict[str, str]], thinking: str = "off") -> str:
    """The prompt string (generation prompt appended) for a chat tokenizer."""
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                         **chat_template_kwargs(thinking))


def encode(tokenizer: Any, msgs: list[dict[str, str]], thinking: str = "off") -> list[int]:
    """Prompt token ids; the rendered text is tokenised without adding special tokens twice."""
    return list(tokenizer(render(tokenizer, msgs, thinking), add_special_tokens=False)["input_ids"])
