"""Prompt construction: T(x, z), chat templates, thinking convention."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from p2o import prompts


def test_template_insertion():
    x = prompts.user_text("What is 2 + 3?")
    assert x == "What is 2 + 3? Let's think step by step and output the final answer within \\boxed{}."
    assert prompts.insert_template(x, "  Add carefully.\n") == "Add carefully.\n\n" + x
    assert prompts.insert_template(x, "") == x and prompts.insert_template(x, None) == x


def test_user_template_is_not_format_string():
    t = "Solve {question} and put it in \\boxed{} {0}"
    assert prompts.user_text("1+1", t) == "Solve 1+1 and put it in \\boxed{} {0}"


def test_messages_with_system_and_template():
    m = prompts.messages("Q?", template="Z", system="S")
    assert m[0] == {"role": "system", "content": "S"}
    assert m[1]["content"].startswith("Z\n\nQ?")


def test_chat_rendering_with_real_tokenizer(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    plain = prompts.render(tok, prompts.messages("What is 1 + 1?"))
    templated = prompts.render(tok, prompts.messages("What is 1 + 1?", template="Be careful."))
    assert plain.endswith("<|im_start|>assistant\n") and "Be careful.\n\nWhat is 1 + 1?" in templated
    ids = prompts.encode(tok, prompts.messages("What is 1 + 1?"))
    assert tok.decode(ids) == plain


def test_thinking_convention_validated():
    assert prompts.chat_template_kwargs("off") == {"enable_thinking": False}
    with pytest.raises(ValueError, match="model.thinking"):
        prompts.chat_template_kwargs("auto")
