"""String normalisation of an answer before parsing.

`normalize(s)` returns a `Normalized(text, percent, degrees)`: LaTeX presentation noise removed, so that
equal answers written differently become the same string. Each rule is a small function applied in the
order of `_RULES`; all are linear-time string/regex operations without nested quantifiers.

Rules (in order): math delimiters ($, \\(, \\[) ; spacing and sizing commands (\\, \\! \\quad \\left
\\right \\big ...) ; \\dfrac/\\tfrac -> \\frac, \\dbinom/\\tbinom -> \\binom ; text wrappers (\\text,
\\textbf, \\mathrm, \\mbox, ...) unwrapped ; degrees (^\\circ, °, "degrees") removed and flagged ;
percent (\\%, %, "percent") removed and flagged ; dollar signs ; trailing units (cm, inches, square
feet, ...) after a numeric value ; thousands separators (1,000 / 1{,}000 / 1\\,000) ; a trailing period ;
multiple-choice letters "(C)" / "\\textbf{(C)}" -> "C" ; whitespace collapsed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from p2o.reward.extract import brace_end


@dataclass(frozen=True)
class Normalized:
    """`text`: the normalised answer; `percent`/`degrees`: a % or degree sign was removed."""

    text: str
    percent: bool = False
    degrees: bool = False


_SPACING = re.compile(r"(?<!\\)\\(?:[,!;:> ]|(?:quad|qquad|displaystyle|textstyle|scriptstyle|limits|nolimits)(?![a-zA-Z]))")
_SIZING = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|middle)(?![a-zA-Z])")
_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|textrm|textup|textnormal|mathrm|mathbf|mathit|mathsf|"
                            r"mathnormal|mbox|hbox|operatorname|rm|bf|boldsymbol|bm|boxed|fbox)\s*\{")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree|\s*\bdegrees?\b")
_PERCENT = re.compile(r"\\%|%|\s*\bpercent\b")
_UNITS = ("cm", "mm", "km", "m", "meters", "meter", "metres", "centimeters", "kilometers", "inches", "inch", "in",
          "feet", "foot", "ft", "yards", "yard", "yd", "miles", "mile", "mi", "units", "unit", "sq", "square",
          "cubic", "dollars", "dollar", "cents", "cent", "seconds", "second", "sec", "s", "minutes", "minute",
          "min", "hours", "hour", "hr", "days", "day", "weeks", "week", "years", "year", "grams", "gram", "g",
          "kg", "pounds", "pound", "lbs", "lb", "ounces", "oz", "liters", "liter", "l", "ml", "mph", "kph",
          "people", "students", "ways", "times", "points", "coins", "marbles", "books", "items", "apples",
          "radians", "rad", "per", "sides", "edges", "vertices", "handshakes", "tiles", "cookies",
          "eV", "keV", "MeV", "GeV", "J", "kJ", "K", "N", "Pa", "kPa", "atm", "W", "kW", "Hz", "kHz", "MHz", "V",
          "mol", "nm", "um", "Angstrom", "h", "kmh", "mg", "cal", "kcal")
_UNIT = r"\b(?:" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")\b(?:\s*\^\s*\{?-?[123]\}?)?"
_UNIT_TAIL = re.compile(r"^(.*?[0-9}a-zA-Z)\]]|.*?\\pi)\s*(?:" + _UNIT + r"(?:\s*/\s*" + _UNIT + r")?\s*)+$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_ENDS_WITH_UNIT = re.compile(_UNIT + r"\s*$")
_CHOICE = re.compile(r"^\(([A-E])\)$")
_CHOICE_WITH_VALUE = re.compile(r"^\(([A-E])\)\s*(.+)$")


def _delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left):len(s) - len(right)].strip()
    return s.replace("$", "")


def _spacing(s: str) -> str:
    s = re.sub(r"(\d)\\[,!](?=\d{3}(?!\d))", r"\1", s)  # 10\,000: a thin space between digit groups
    s = re.sub(r"\\(?:left|right)\s*\.", "", s)  # invisible delimiters \left. \right.
    s = _SIZING.sub("", _SPACING.sub(" ", s))
    return s.replace("~", " ")


def _fractions(s: str) -> str:
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    return re.sub(r"\\[dt]binom(?![a-zA-Z])", r"\\binom", s)


def _text_wrappers(s: str) -> str:
    """Unwrap `\\text{..}`-like commands (and a nested `\\boxed{..}`) with nested braces matched."""
    for _ in range(50):  # each pass unwraps the first wrapper; bounded for pathological input
        m = _TEXT_WRAPPERS.search(s)
        if not m:
            break
        end = brace_end(s, m.end() - 1)
        if end < 0:
            break
        s = s[:m.start()] + " " + s[m.end():end] + " " + s[end + 1:]
    return s


def _units(s: str) -> str:
    if not _ENDS_WITH_UNIT.search(s):
        return s  # cheap exit: the full pattern below is quadratic on long unit-like strings
    m = _UNIT_TAIL.match(s.strip())
    if m and re.search(r"\d|\\pi|\\frac|\\sqrt", m.group(1)):
        return m.group(1)
    return s


def _thousands(s: str) -> str:
    s = re.sub(r"(\d)\{,\}(?=\d{3})", r"\1", s)
    compact = s.strip()
    if re.fullmatch(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?", compact):  # 1 000 000
        return compact.replace(" ", "")
    if _THOUSANDS.match(compact):
        return compact.replace(",", "")
    return s


def _trailing_period(s: str) -> str:
    s = s.strip()
    while s.endswith(".") or s.endswith("\\."):
        s = s[:-2] if s.endswith("\\.") else s[:-1]
        s = s.rstrip()
    return s


def _choice(s: str) -> str:
    m = _CHOICE.match(s.strip())
    return m.group(1) if m else s


def _subscripts(s: str) -> str:
    return re.sub(r"_\{(\d+)\}", r"_\1", s)


def split_choice(s: str) -> tuple[str, str] | None:
    """("C", "12") for a multiple-choice answer written with its value, "(C) 12"; else None."""
    m = _CHOICE_WITH_VALUE.match(s.strip())
    return (m.group(1), m.group(2).strip()) if m else None


def _whitespace(s: str) -> str:
    return " ".join(s.split())


def normalize(answer: str) -> Normalized:
    """Normalise an answer string (see the module docstring for the rules, in order)."""
    s = _delimiters(answer.replace("\\$", ""))
    s = _spacing(s)
    s = _fractions(s)
    s = _text_wrappers(s)
    s, n_deg = _DEGREES.subn("", s)
    s, n_pct = _PERCENT.subn("", s)
    s = s.replace("\\#", "")
    s = _trailing_period(s)
    s = _units(s)
    s = _thousands(s)
    s = _trailing_period(s)
    s = _subscripts(s)
    s = _choice(s)
    return Normalized(_whitespace(s), percent=n_pct > 0, degrees=n_deg > 0)
