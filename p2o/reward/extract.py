"""Final-answer extraction from a model response.

Strict mode (the reward's default) takes the content of the LAST `\\boxed{...}` or `\\fbox{...}` in the
text, with nested braces matched; `\\boxed 5` (a single token after a space) is accepted too. Optional
fallbacks apply only when no box is present:

- ``last_number``: the last number in the text (integer, decimal, or `a/b`), sign included;
- ``answer_is``: the text after the last "the answer is" / "answer:" / "final answer:" up to the end of
  that sentence or line.

Extraction is a pure function over strings: linear time, no regex backtracking on nested input.
"""
from __future__ import annotations

import re

FALLBACKS = ("none", "last_number", "answer_is")

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*:|answer\s*:)\s*", re.IGNORECASE)


def brace_end(text: str, open_at: int) -> int:
    """Index of the '}' matching `text[open_at] == '{'` (escaped `\\{` `\\}` skipped); -1 if unbalanced."""
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _box_at(text: str, start: int, command: str) -> tuple[str | None, int]:
    """(content, end index) of the box command at `start`; content None when it is not a well-formed box."""
    i = start + len(command)
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        end = brace_end(text, i)
        return (None, len(text)) if end < 0 else (text[i + 1:end], end + 1)
    if i > start + len(command):  # `\\boxed 5`: one whitespace-free token
        m = re.match(r"[^\s$]+", text[i:i + 10_000])
        if m:
            return m.group(0), i + m.end()
    return None, start + len(command)


def last_boxed(text: str) -> str | None:
    """Content of the last top-level `\\boxed{}` / `\\fbox{}` in `text` (nested braces matched), or None.

    Boxes nested inside a box belong to it (`\\boxed{\\boxed{4}}` gives `\\boxed{4}`; normalisation unwraps
    it). When the last box is malformed (unbalanced braces), the answer is None: a truncated final box is
    not silently replaced by an earlier one. One left-to-right pass: linear time.
    """
    content: str | None = None
    found = False
    nxt = 0
    for m in _BOX_RE.finditer(text):
        if m.start() < nxt:
            continue  # inside the previous box
        found = True
        content, nxt = _box_at(text, m.start(), m.group(0))
    if not found or content is None:
        return None
    return content.strip()


def _last_number(text: str) -> str | None:
    last = None
    for m in _LAST_NUMBER.finditer(text):
        last = m
    if last is None:
        return None
    return last.group(0).rstrip(",").replace(" ", "")


def _answer_is(text: str) -> str | None:
    last = None
    for m in _ANSWER_IS.finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end():]
    line = rest.split("\n", 1)[0]
    # end of sentence: a period followed by whitespace or end, not a decimal point
    m = re.search(r"\.(?:\s|$)", line)
    if m:
        line = line[:m.start()]
    line = line.strip().strip("$").strip()
    return line or None


def extract_answer(text: str, fallback: str = "none") -> str | None:
    """The final answer in a response, or None.

    `fallback` is one of `FALLBACKS`; it is used only when the text has no box. Raises ValueError for an
    unknown fallback name (a configuration error, not a property of the text).
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"reward.fallback: got {fallback!r}; expected one of {', '.join(FALLBACKS)}")
    if not isinstance(text, str):
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if any(cmd in text for cmd in _BOX_COMMANDS):
        return None  # a box is present but malformed: no fallback guessing
    if fallback == "last_number":
        return _last_number(text)
    if fallback == "answer_is":
        return _answer_is(text)
    return None
