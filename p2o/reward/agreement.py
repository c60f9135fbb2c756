"""Agreement of the verifier with math-verify on a labelled pair set.

    python -m p2o.reward.agreement [--jsonl tests/data/verifier_pairs.jsonl] [--out report.json]

Prints the agreement rate of our verdicts with math-verify's, the accuracy of each against the expected
labels, and every disagreement. math-verify is a development dependency (`pip install math-verify`); it
uses `signal.alarm` for its timeouts, so run this as its own process (main thread), as the tests do.

Protocol (like for like, equivalence only): both sides see the same extracted answer. The final answer
is extracted once (`extract_answer`, strict: the last `\\boxed{}`/`\\fbox{}`); a response without one is
wrong for both (the reward is strict, while math-verify alone would fall back to the last LaTeX
expression). math-verify then gets `\\boxed{extracted}` and `\\boxed{gold}`, parsed with
`LatexExtractionConfig(boxed_match_priority=0)` + `ExprExtractionConfig()`, and its verdict is
`verify(gold, pred)` with its default precision. Extraction itself is covered by the unit tests.
Input lines: {"response", "answer", "label" (optional), "id" (optional), "style" (optional), "note"}.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p2o.atomic import atomic_write_json
from p2o.jsonl import read_jsonl

DEFAULT_PAIRS = Path(__file__).resolve().parents[2] / "tests" / "data" / "verifier_pairs.jsonl"


@dataclass
class Disagreement:
    id: str
    style: str
    answer: str
    extracted: str | None
    ours: bool
    ours_reason: str
    math_verify: bool
    label: bool | None
    note: str


@dataclass
class AgreementReport:
    n: int
    agreement: float                 # fraction of pairs where our verdict == math-verify's
    ours_vs_label: float | None   # accuracy against the expected labels (None without labels)
    math_verify_vs_label: float | None
    disagreements: list[Disagreement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def math_verify_label(response: str, gold: str) -> bool:
    """math-verify's verdict under the strict-box protocol of the module docstring."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    from p2o.reward.extract import extract_answer

    extracted = extract_answer(response)
    if extracted is None:
        return False
    cfg = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    try:
        g = parse("\\boxed{" + gold + "}", extraction_config=cfg)
        p = parse("\\boxed{" + extracted + "}", extraction_config=cfg)
        return bool(verify(g, p))
    except Exception:  # noqa: BLE001 - a math-verify failure counts as "not verified"
        return False


def compute(rows: list[dict[str, Any]]) -> AgreementReport:
    """Agreement report for rows with 'response' and 'answer' (and optionally 'label')."""
    from p2o.reward.grade import grade

    agree = ours_ok = mv_ok = labelled = 0
    dis: list[Disagreement] = []
    for k, r in enumerate(rows):
        v = grade(r["response"], r["answer"])
        mv = math_verify_label(r["response"], r["answer"])
        label = r.get("label")
        if label is not None:
            labelled += 1
            ours_ok += v.correct == label
            mv_ok += mv == label
        if v.correct == mv:
            agree += 1
        else:
            dis.append(Disagreement(str(r.get("id", k)), str(r.get("style", "")), r["answer"], v.extracted,
                                    v.correct, v.reason, mv, label, str(r.get("note", ""))))
    n = len(rows)
    return AgreementReport(n=n, agreement=agree / max(1, n),
                           ours_vs_label=ours_ok / labelled if labelled else None,
                           math_verify_vs_label=mv_ok / labelled if labelled else None, disagreements=dis)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m p2o.reward.agreement", description=__doc__.split("\n")[0])
    ap.add_argument("--jsonl", default=str(DEFAULT_PAIRS), help="labelled pairs (default: %(default)s)")
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)
    import logging
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    rows = read_jsonl(args.jsonl)
    rep = compute(rows)
    print(f"pairs {rep.n}  agreement with math-verify {rep.agreement:.4f}  "
          f"ours vs labels {rep.ours_vs_label}  math-verify vs labels {rep.math_verify_vs_label}")
    print("| id | style | gold | extracted | ours (reason) | math-verify | label | note |")
    print("|---|---|---|---|---|---|---|---|")
    for d in rep.disagreements:
        print(f"| {d.id} | {d.style} | `{d.answer}` | `{d.extracted}` | {d.ours} ({d.ours_reason}) | "
              f"{d.math_verify} | {d.label} | {d.note} |")
    if args.out:
        atomic_write_json(args.out, rep.to_dict(), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
