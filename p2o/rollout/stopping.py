"""When a response ends, and what its text is.

A response ends at the first EOS token (kept in `response_ids`, dropped from `text`), when its decoded
text contains a stop string (the tokens up to the one completing it are kept; `text` is cut before the
stop string, as in the OpenAI API), or after `max_new_tokens` tokens ('length').
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def eos_token_ids(tokenizer: Any, model_config: Any = None, generation_config: Any = None) -> set[int]:
    """EOS ids from the tokenizer and the model's (generation) config; an error if there are none."""
    ids: set[int] = set()
    for src in (generation_config, model_config, tokenizer):
        value = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("no EOS token id in the tokenizer or model config; set eos_token_id in config.json")
    return ids


@dataclass
class StopResult:
    finished: bool
    reason: str | None = None
    """'stop' or 'length' once finished."""


class StopChecker:
    """Decides after each token whether one sequence is done; `text()` gives its final text."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], stop: Iterable[str], max_new_tokens: int):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.stop = [s for s in stop if s]
        self.max_new_tokens = max_new_tokens

    def check(self, response_ids: list[int]) -> StopResult:
        if response_ids and response_ids[-1] in self.eos_ids:
            return StopResult(True, "stop")
        if self.stop and self._stop_index(self._decode(response_ids)) is not None:
            return StopResult(True, "stop")
        if len(response_ids) >= self.max_new_tokens:
            return StopResult(True, "length")
        return StopResult(False)

    def text(self, response_ids: list[int]) -> str:
        if response_ids and response_ids[-1] in self.eos_ids:
            response_ids = response_ids[:-1]
        text = self._decode(response_ids)
        cut = self._stop_index(text)
        return text if cut is None else text[:cut]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _stop_index(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None
