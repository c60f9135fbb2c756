"""N-gram overlap between training questions and evaluation benchmarks (decontamination report).

Texts are normalised (NFKC, lower case, LaTeX commands and punctuation turned into separators) and split
into word tokens. A training question is flagged against a benchmark when it shares at least one n-gram
(default 13 words, the GPT-3 / Tulu convention) with a benchmark question; a benchmark question shorter
than n words is matched as a whole (its full token sequence appearing inside the training question).

    index = NgramIndex.build({"math500": [p.question for p in math500]}, n=13)
    hits = index.matches("Let $x$ be ...")  # -> {"math500": [3, 17]} (indices of benchmark questions)
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Word tokens of `text` after NFKC + lower case (LaTeX backslashes, braces and punctuation split words)."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def ngrams(toks: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return (tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


@dataclass
class NgramIndex:
    """n-grams of benchmark questions -> (benchmark, question index) that contain them."""

    n: int
    grams: dict[tuple[str, ...], set[tuple[str, int]]] = field(default_factory=lambda: defaultdict(set))
    short: dict[int, dict[tuple[str, ...], set[tuple[str, int]]]] = field(default_factory=dict)
    """Questions shorter than n tokens, by length: their whole token sequence."""

    @staticmethod
    def build(benchmarks: dict[str, Sequence[str]], n: int = 13) -> NgramIndex:
        if n < 1:
            raise ValueError(f"decontamination n-gram size: got {n}; expected an integer >= 1")
        index = NgramIndex(n=n)
        for name, questions in benchmarks.items():
            for i, q in enumerate(questions):
                toks = tokens(q)
                if not toks:
                    continue
                if len(toks) < n:
                    index.short.setdefault(len(toks), defaultdict(set))[tuple(toks)].add((name, i))
                else:
                    for g in ngrams(toks, n):
                        index.grams[g].add((name, i))
        return index

    def matches(self, text: str) -> dict[str, list[int]]:
        """Benchmark -> sorted indices of the benchmark questions `text` overlaps with."""
        toks = tokens(text)
        found: set[tuple[str, int]] = set()
        for g in ngrams(toks, self.n):
            found |= self.grams.get(g, set())
        for length, table in self.short.items():
            for g in ngrams(toks, length):
                found |= table.get(g, set())
        out: dict[str, list[int]] = defaultdict(list)
        for name, i in sorted(found):
            out[name].append(i)
        return dict(out)


@dataclass
class ContaminationReport:
    """Which training rows overlap which benchmarks."""

    n: int
    benchmarks: dict[str, int]
    """Benchmark -> number of its questions indexed."""
    flagged: dict[str, list[str]]
    """Benchmark -> ids of the training rows that overlap it."""
    examples: list[dict] = field(default_factory=list)
    """Up to 20 (train id, benchmark, benchmark question index) triples for inspection."""

    @property
    def flagged_ids(self) -> set[str]:
        return {i for ids in self.flagged.values() for i in ids}

    def to_dict(self) -> dict:
        return {"ngram": self.n, "benchmarks": self.benchmarks,
                "flagged_counts": {k: len(v) for k, v in self.flagged.items()},
                "flagged_total": len(self.flagged_ids), "flagged": self.flagged, "examples": self.examples}


def contamination_report(train: Sequence[tuple[str, str]], benchmarks: dict[str, Sequence[str]],
                         n: int = 13) -> ContaminationReport:
    """Overlap report for training rows given as (id, question) against benchmark questions."""
    index = NgramIndex.build(benchmarks, n)
    flagged: dict[str, list[str]] = {name: [] for name in benchmarks}
    examples: list[dict] = []
    for row_id, question in train:
        for name, idx in index.matches(question).items():
            flagged[name].append(row_id)
            if len(examples) < 20:
                examples.append({"id": row_id, "benchmark": name, "benchmark_index": idx[0]})
    return ContaminationReport(n=n, benchmarks={k: len(v) for k, v in benchmarks.items()}, flagged=flagged,
                               examples=examples)
