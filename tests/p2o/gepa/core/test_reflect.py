"""Meta-prompt structure, context fitting, and robust parsing of reflection answers."""
from __future__ import annotations

import pytest

from p2o.gepa.core.reflect import (
    ApproxTokens,
    Completion,
    CompletionFailed,
    CompletionUnavailable,
    ReflectionExample,
    ReflectionRequest,
    Reflector,
    TokenizerTokens,
    build_meta_prompt,
    completion_text,
    parse_template,
)


def example(i: int, output: str = "work... \\boxed{3}", correct=False, extracted="3") -> ReflectionExample:
    return ReflectionExample(inputs=f"What is {i}+{i}? Let's think step by step.", output=output, answer=str(2 * i),
                             correct=correct, extracted=extracted, reason="mismatch", score=float(correct))


def test_meta_prompt_structure():
    prompt, kept = build_meta_prompt("Be careful.", [example(1), example(2, correct=True, extracted="4"),
                                                     example(3, extracted=None, output="no answer")], 10_000)
    assert kept == 3
    assert prompt.startswith("I provided an assistant with the following instructions")
    assert "```\nBe careful.\n```" in prompt
    for i in (1, 2, 3):
        assert f"# Example {i}\n## Inputs\nWhat is {i}+{i}?" in prompt
    assert "## Generated Outputs\nwork... \\boxed{3}" in prompt
    assert "Your final answer '3' is incorrect. The correct answer is '2'." in prompt
    assert "Your final answer is correct. The correct answer is '4'." in prompt
    assert "No final answer was found" in prompt and "The correct answer is '6'" in prompt
    assert "Verifier: mismatch" in prompt and "Reward (answer_score) = 1.00" in prompt
    assert prompt.rstrip().endswith("Provide the new instructions within ``` blocks.")


def test_long_outputs_are_cut_head_and_tail_then_examples_dropped():
    counter = ApproxTokens()
    long = "HEAD " + "x" * 20_000 + " TAIL"
    prompt, kept = build_meta_prompt("", [example(1, long), example(2, long)], 2000, counter)
    assert kept == 2 and counter.count(prompt) <= 2000
    assert "HEAD" in prompt and "TAIL" in prompt and "[... truncated ...]" in prompt
    # a format error (no extracted answer) is cut to ~100 + 100 tokens even when it would fit
    prompt, _ = build_meta_prompt("", [example(1, long, extracted=None)], 100_000, counter)
    assert counter.count(prompt) < 700
    # inputs too long for the budget: examples are dropped from the end
    big_input = ReflectionExample("Q" * 6000, "a", "1", False, "2", "", 0.0)
    prompt, kept = build_meta_prompt("", [example(1), big_input], 1000, counter)
    assert kept == 1 and "# Example 2" not in prompt


def test_exact_token_counting_with_a_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer
    counter = TokenizerTokens(AutoTokenizer.from_pretrained(tiny_model_dir))
    long = " ".join(f"step{i}" for i in range(3000))
    prompt, kept = build_meta_prompt("z", [example(1, long)], 800, counter)
    assert kept == 1 and counter.count(prompt) <= 800 and "step0" in prompt and "step2999" in prompt


@pytest.mark.parametrize("text,expected", [
    ("```\nUse care.\n```", "Use care."),
    ("Sure!\n```text\nUse care.\n```\nDone.", "Use care."),
    ("```markdown\nLine 1\nLine 2\n```", "Line 1\nLine 2"),
    ("<think>maybe ```old``` no</think>\n```\nNew one.\n```", "New one."),
    ("reasoning without open tag </think>```\nAfter.\n```", "After."),
    ("Old:\n```\nOld template\n```\nNew:\n```\nNew template\n```", "New template"),
    ("```\nNew template\n```\n```\n\n```", "New template"),
    ("Here:\n```\nUnclosed but complete", "Unclosed but complete"),
])
def test_parse_usable(text, expected):
    assert parse_template(text) == (expected, "")


@pytest.mark.parametrize("text,truncated,why", [
    ("", False, "empty answer"),
    ("<think>only thoughts</think>", False, "empty answer"),
    ("A new template without fences", False, "no fenced block"),
    ("```\n\n```", False, "empty fenced block"),
    ("```\nhalf a templ", True, "cut off"),
    ("```\n" + "x" * 50 + "\n```", False, "longer than 20"),
])
def test_parse_unusable(text, truncated, why):
    template, reason = parse_template(text, truncated=truncated, max_chars=20)
    assert template is None and why in reason


def test_null_content_falls_back_to_reasoning():
    assert completion_text(Completion(None, "thinking... </think>```\nZ\n```")) == "```\nZ\n```"
    assert completion_text(Completion(None, "```\nZ\n```")) == "```\nZ\n```"
    assert completion_text(Completion("```\nC\n```", "ignored")) == "```\nC\n```"


def test_reflector_statuses():
    answers = {"ok": Completion("```\nT\n```"), "garbage": Completion("???"), "cut": Completion("```\nT", None, "length")}

    def complete(prompt: str) -> Completion:
        for key, value in answers.items():
            if f"```\n{key}\n```" in prompt:
                return value
        if "```\ndown\n```" in prompt:
            raise CompletionUnavailable("breaker open")
        raise CompletionFailed("HTTP 500 after 3 retries")

    r = Reflector(complete, context_tokens=4096, max_tokens=256, concurrency=4)
    got = r.propose([ReflectionRequest(t, [example(1)]) for t in ("ok", "garbage", "cut", "down", "boom")])
    assert [g.status for g in got] == ["ok", "unusable", "unusable", "unavailable", "failed"]
    assert got[0].template == "T" and "500" in got[4].detail
    with pytest.raises(ValueError, match="context_tokens"):
        Reflector(complete, context_tokens=100, max_tokens=90)
