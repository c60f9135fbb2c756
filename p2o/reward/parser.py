"""A restricted parser for answers: tokenizer + recursive descent over a LaTeX/ASCII math subset.

Model text is untrusted, so it is never handed to `eval`, `exec`, `sympify` or `parse_expr`. Instead the
tokenizer turns the normalised answer into a small set of token kinds and the recursive-descent parser
builds sympy objects directly (`sympy.Integer`, `Add`, `Mul`, `Pow`, whitelisted functions). Symbols are
single latin letters (optionally subscripted) or greek-letter names; nothing else becomes a name.

Accepted (see docs/verifier.md): integers and decimals (exact rationals), + - * / ^, implicit
multiplication, parentheses, \\frac, \\sqrt and \\sqrt[n], \\binom, n!, |x|, floor/ceil, \\pi, e, i,
\\infty, sin/cos/tan/.../log/ln/exp, log_b, mixed numbers (`2\\frac{1}{2}` = 5/2 for a proper fraction of
integers), repeating decimals `0.1\\overline{6}`, \\pm (a two-element set), tuples and intervals `(a, b]`, sets `\\{a, b\\}`, bare lists `a, b`,
unions `\\cup`, matrices (pmatrix/bmatrix/vmatrix/matrix), relations (= < > \\le \\ge \\ne, \\in); an
equation `x = v` with a lone variable on the left is its right-hand side, and `x > a`, `a < x \\le b`
are intervals.

Limits (each raises `TooComplex`): nesting depth (`MAX_DEPTH`), token count (`MAX_TOKENS`), number
literal length (`MAX_DIGITS`), the bit size of a numeric power (`MAX_POWER_BITS`: exponent towers such as
10^{10^{10}} are refused before sympy computes them), exponents of symbolic bases (`MAX_SYMBOLIC_EXPONENT`),
factorial and binomial arguments (`MAX_FACTORIAL`, `MAX_BINOMIAL`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import sympy

from p2o.reward.values import Bracketed, MatrixOf, Relation, SetOf, Text, UnionOf

MAX_DEPTH = 40
MAX_TOKENS = 2000
MAX_DIGITS = 400
MAX_POWER_BITS = 40_000
MAX_SYMBOLIC_EXPONENT = 200
MAX_FACTORIAL = 1000
MAX_BINOMIAL = 5_000


class ParseError(ValueError):
    """The answer is outside the accepted math subset."""


class TooComplex(ParseError):
    """The answer hits a size limit (depth, tokens, digits, power size, factorial)."""


# ----------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class Tok:
    kind: str   # num | var | cmd | func | op | env_begin | env_end | end
    text: str


_FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc,
    "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan, "sinh": sympy.sinh, "cosh": sympy.cosh,
    "tanh": sympy.tanh, "ln": sympy.log, "log": sympy.log, "exp": sympy.exp, "sqrt": sympy.sqrt,
}
_GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta",
          "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi",
          "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega")
_CMD_OPS = {
    "cdot": "*", "times": "*", "ast": "*", "div": "/", "le": "<=", "leq": "<=", "leqslant": "<=", "ge": ">=",
    "geq": ">=", "geqslant": ">=", "lt": "<", "gt": ">", "ne": "!=", "neq": "!=", "in": "in", "cup": "cup",
    "pm": "pm", "mp": "mp", "lvert": "|", "rvert": "|", "vert": "|", "mid": "|", "lfloor": "lfloor",
    "rfloor": "rfloor", "lceil": "lceil", "rceil": "rceil", "{": "{set", "}": "}set", "\\": "row",
    "langle": "(", "rangle": ")", "colon": ":",
}
_UNICODE = {"π": "\\pi ", "∞": "\\infty ", "√": "\\sqrt ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ",
            "−": "-", "–": "-", "×": "*", "·": "*", "÷": "/", "∪": "\\cup ", "±": "\\pm ", "∈": "\\in ",
            "∅": "\\emptyset ", "⋅": "*"}
_SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾", "0123456789+-=()", strict=True))
_SUBSCRIPTS = dict(zip("₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎", "0123456789+-=()", strict=True))
_SCRIPT_RUN = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾]+|[₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎]+")
_SINGLE = set("+-*/^_()[]{}|,;!=<>&:'")
_WORD_SEPARATORS = {"and", "or"}
_REPEATING = re.compile(r"(\d{0,30})\.(\d{0,30})\\overline\s*\{(\d{1,30})\}")
_E_NOTATION = re.compile(r"[eE]([+-]?)(\d{1,4})(?![\d.a-zA-Z])")
_ENVS = {"pmatrix", "bmatrix", "vmatrix", "Bmatrix", "matrix", "smallmatrix", "array"}


def _scripts(m: re.Match) -> str:
    run = m.group()
    if run[0] in _SUPERSCRIPTS:
        return "^{" + "".join(_SUPERSCRIPTS[c] for c in run) + "}"
    return "_{" + "".join(_SUBSCRIPTS[c] for c in run) + "}"


def tokenize(s: str) -> list[Tok]:
    """Tokens of a normalised answer; raises ParseError on characters outside the accepted alphabet.

    Unicode superscript / subscript runs are read as exponents / subscripts (x² = x^{2}, 10⁻³ = 10^{-3},
    x₁ = x_{1}); digits are decimal digits only (other "digit" characters such as ① are refused)."""
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    s = _SCRIPT_RUN.sub(_scripts, s)
    toks: list[Tok] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c.isspace():
            i += 1
        elif (c.isdecimal() or c == ".") and (m := _REPEATING.match(s, i)):  # 0.1\overline{6} = 1/6
            whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
            num = int(whole + fixed + rep) - int(whole + fixed)
            den = (10 ** len(rep) - 1) * 10 ** len(fixed)
            toks.extend([Tok("op", "("), Tok("num", str(num)), Tok("op", "/"), Tok("num", str(den)), Tok("op", ")")])
            i = m.end()
        elif c.isdecimal() or (c == "." and i + 1 < n and s[i + 1].isdecimal()):
            j = i
            while j < n and s[j].isdecimal():
                j += 1
            if j < n and s[j] == "." and j + 1 < n and s[j + 1].isdecimal():
                j += 1
                while j < n and s[j].isdecimal():
                    j += 1
            m = _E_NOTATION.match(s, j)
            if m:  # 5e-7, 1.2E3: scientific notation (a literal directly followed by e, sign, digits)
                toks.extend([Tok("op", "("), Tok("num", s[i:j]), Tok("op", "*"), Tok("num", "10"), Tok("op", "^"),
                             Tok("op", "{"), Tok("op", "-") if m.group(1) == "-" else Tok("op", "+"),
                             Tok("num", m.group(2)), Tok("op", "}"), Tok("op", ")")])
                i = m.end()
                continue
            toks.append(Tok("num", s[i:j]))
            i = j
        elif c == "\\":
            j = i + 1
            while j < n and s[j].isalpha():
                j += 1
            if j == i + 1:  # \{ \} \\ \, ...
                if j < n:
                    j += 1
            name = s[i + 1:j]
            if name in ("begin", "end"):
                k = s.find("}", j)
                if k < 0 or s[j:j + 1] != "{":
                    raise ParseError(f"malformed \\{name}")
                env = s[j + 1:k].strip()
                if env not in _ENVS:
                    raise ParseError(f"environment {env!r} not accepted")
                toks.append(Tok("env_" + name, env))
                j = k + 1
                if name == "begin" and env == "array" and j < n and s[j] == "{":  # column spec {cc}
                    k = s.find("}", j)
                    j = k + 1 if k > 0 else n
            elif name in _CMD_OPS:
                toks.append(Tok("op", _CMD_OPS[name]))
            elif name in _FUNCS:
                toks.append(Tok("func", name))
            else:
                toks.append(Tok("cmd", name))
            i = j
        elif c.isalpha() and c.isascii():
            j = i
            while j < n and s[j].isalpha() and s[j].isascii():
                j += 1
            toks.extend(_word_tokens(s[i:j]))
            i = j
        elif c in _SINGLE:
            if c in "<>!" and i + 1 < n and s[i + 1] == "=":
                toks.append(Tok("op", {"<": "<=", ">": ">=", "!": "!="}[c]))
                i += 2
            else:
                toks.append(Tok("op", c))
                i += 1
        else:
            raise ParseError(f"character {c!r} not accepted")
        if len(toks) > MAX_TOKENS:
            raise TooComplex("too many tokens")
    toks.append(Tok("end", ""))
    return toks


def _word_tokens(word: str) -> list[Tok]:
    """A run of letters: a function name, 'pi', 'and'/'or' separators, or single-letter variables."""
    if word in _WORD_SEPARATORS:
        return [Tok("op", ",")]
    out: list[Tok] = []
    i = 0
    names = sorted(list(_FUNCS) + ["pi", "infty", "inf"], key=len, reverse=True)
    while i < len(word):
        for name in names:
            if word.startswith(name, i):
                out.append(Tok("func", name) if name in _FUNCS else Tok("cmd", "pi" if name == "pi" else "infty"))
                i += len(name)
                break
        else:
            out.append(Tok("var", word[i]))
            i += 1
    return out


# ----------------------------------------------------------------------------- sympy construction with limits
def _abs_float(x: sympy.Basic) -> float:
    """|x| of a numeric sympy value as a float (inf when it overflows or cannot be evaluated)."""
    try:
        v = abs(complex(sympy.N(x, 15)))
    except (TypeError, ValueError, OverflowError):
        return float("inf")
    return v if math.isfinite(v) else float("inf")


def _log2_size(x: sympy.Basic) -> float:
    """Bits needed to write the numeric value x: |log2|x|| (a huge or a tiny number both cost bits)."""
    if x.is_Integer:
        return float(abs(int(x)).bit_length())
    if x.is_Rational:
        return float(max(abs(x.p).bit_length(), abs(x.q).bit_length()))
    v = _abs_float(x)
    if v == 0:
        return 0.0
    return abs(math.log2(v)) if math.isfinite(v) else float("inf")


def make_pow(base: Any, exp: Any) -> sympy.Basic:
    """`base ** exp`, refusing powers whose value would exceed MAX_POWER_BITS (or huge symbolic exponents)."""
    base, exp = _expr(base), _expr(exp)
    if exp.is_number:
        e_mag = abs(float(exp)) if exp.is_Rational else _abs_float(exp)
        if base.is_number:
            if base.is_zero or base in (sympy.S.One, sympy.S.NegativeOne):
                return sympy.Pow(base, exp)
            if e_mag * max(_log2_size(base), 1.0) > MAX_POWER_BITS:
                raise TooComplex("power too large")
        elif e_mag > MAX_SYMBOLIC_EXPONENT:
            raise TooComplex("exponent of a symbolic base too large")
    return sympy.Pow(base, exp)  # a symbolic exponent stays unevaluated


def _expr(v: Any) -> sympy.Basic:
    if isinstance(v, int):
        return sympy.Integer(v)
    if isinstance(v, sympy.Basic) and not isinstance(v, (sympy.Set, sympy.Tuple)):
        return v
    raise ParseError("a tuple, set or interval cannot be used inside arithmetic")


def _number(text: str) -> sympy.Rational:
    digits = text.replace(".", "")
    if len(digits) > MAX_DIGITS:
        raise TooComplex("number literal too long")
    if "." in text:
        whole, frac = text.split(".")
        return sympy.Rational(int(whole or "0") * 10 ** len(frac) + int(frac), 10 ** len(frac))
    return sympy.Integer(int(text))


# ----------------------------------------------------------------------------- recursive descent
class _Indexed:
    """Bounded look-ahead: indexes past the end give the end token."""

    def __init__(self, get):
        self.get = get

    def __getitem__(self, k: int) -> Tok:
        return self.get(k)


class _Parser:
    def __init__(self, toks: list[Tok]):
        self.toks = toks
        self.pos = 0
        self.depth = 0
        self.abs_depth = 0
        self.assigned: list[sympy.Symbol | None] = []  # per top-level item: the x of `x = value`, else None

    # -- helpers
    def peek(self, k: int = 0) -> Tok:
        return self.toks[min(self.pos + k, len(self.toks) - 1)]

    def next(self) -> Tok:
        t = self.toks[self.pos]
        if t.kind != "end":
            self.pos += 1
        return t

    def at(self, kind: str, text: str | None = None) -> bool:
        t = self.peek()
        return t.kind == kind and (text is None or t.text == text)

    def expect(self, kind: str, text: str) -> None:
        t = self.next()
        if t.kind != kind or t.text != text:
            raise ParseError(f"expected {text!r}, got {t.text!r}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooComplex("nesting too deep")

    # -- grammar
    def answer(self) -> Any:
        self.assigned = []
        items = self.item_list(closers=())
        if not self.at("end"):
            raise ParseError(f"unexpected {self.peek().text!r}")
        if len(items) == 1:
            return items[0]
        names = self.assigned
        if len(names) == len(items) and all(names) and len(set(names)) == len(names):
            # a=2, b=3: values ordered by variable name, compared in order
            order = sorted(range(len(items)), key=lambda k: str(names[k]))
            return Bracketed("(", ")", tuple(items[k] for k in order))
        return SetOf(tuple(items), braces=False)

    def item_list(self, closers: tuple[str, ...]) -> list[Any]:
        items = [self.item()]
        while self.at("op", ",") or self.at("op", ";"):
            self.next()
            if self.peek().kind == "end" or (self.peek().kind == "op" and self.peek().text in closers):
                break  # trailing comma
            items.append(self.item())
        return items

    def item(self) -> Any:
        self.enter()
        parts = [self.relation()]
        while self.at("op", "cup") or (self.at("var", "U") and self.peek(1).kind == "op"
                                       and self.peek(1).text in "([\\{set"):
            self.next()
            parts.append(self.relation())
        self.depth -= 1
        return parts[0] if len(parts) == 1 else UnionOf(tuple(parts))

    def _skip_function_head(self) -> None:
        """Skip `f(x) =` / `f(x, y) =` (a function name applied to variables, then '=')."""
        def t_at(k: int) -> Tok:
            return self.toks[k] if k < len(self.toks) else self.toks[-1]
        t = _Indexed(t_at)
        k = self.pos
        if not (t[k].kind == "var" and t[k + 1].kind == "op" and t[k + 1].text == "("):
            return
        k += 2
        while t[k].kind == "var" and t[k + 1].kind == "op" and t[k + 1].text in (",", ")"):
            k += 2
            if t[k - 1].text == ")":
                if t[k].kind == "op" and t[k].text == "=":
                    self.pos = k + 1
                return

    def relation(self) -> Any:
        self._skip_function_head()
        terms = [self.expr()]
        ops: list[str] = []
        while self.peek().kind == "op" and self.peek().text in ("=", "<", ">", "<=", ">=", "!=", "in"):
            ops.append(self.next().text)
            terms.append(self.expr())
        if not ops:
            if self.depth == 1:
                self.assigned.append(None)
            return terms[0]
        if self.depth == 1:
            self.assigned.append(terms[0] if ops == ["="] and _lone_symbol(terms[0]) else None)
        return _simplify_relation(tuple(ops), tuple(terms))

    def expr(self) -> Any:
        self.enter()
        sign = 1
        while self.peek().kind == "op" and self.peek().text in "+-":
            if self.next().text == "-":
                sign = -sign
        value = self.term()
        if sign < 0:
            value = -_expr(value)
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            op = self.next().text
            rhs = self.term()
            value = sympy.Add(_expr(value), _expr(rhs) if op == "+" else -_expr(rhs))
        self.depth -= 1
        return value

    def _starts_factor(self) -> bool:
        t = self.peek()
        if t.kind in ("num", "var", "func", "env_begin"):
            return True
        if t.kind == "cmd":
            return True
        if t.kind == "op":
            if t.text in ("(", "{", "lfloor", "lceil", "{set"):
                return True
            if t.text == "|" and self.abs_depth == 0:
                return True
        return False

    def term(self) -> Any:
        first = self.peek()
        value = self.unary()
        # mixed number: an integer literal directly followed by a proper fraction of integer literals
        if first.kind == "num" and "." not in first.text and self.at("cmd", "frac") and self.pos - 1 >= 0 \
                and self.toks[self.pos - 1] is first:
            mixed = self._try_mixed(value)
            if mixed is not None:
                value = mixed
        while True:
            t = self.peek()
            if t.kind == "op" and t.text in ("*", "/"):
                self.next()
                rhs = self.unary()
                value = sympy.Mul(_expr(value), _expr(rhs)) if t.text == "*" else \
                    sympy.Mul(_expr(value), make_pow(rhs, -1))
            elif self._starts_factor():
                rhs = self.power()
                value = sympy.Mul(_expr(value), _expr(rhs))
            else:
                return value

    def _try_mixed(self, whole: sympy.Integer) -> sympy.Basic | None:
        save = self.pos
        t = self.toks
        # \frac { n } { d }  or  \frac n d (single digits)
        seq = [x.text if x.kind != "num" else "#" + x.text for x in t[self.pos:self.pos + 7]]
        num = den = None
        if seq[:7] and len(seq) >= 7 and seq[1] == "{" and seq[2].startswith("#") and seq[3] == "}" \
                and seq[4] == "{" and seq[5].startswith("#") and seq[6] == "}":
            num, den, skip = seq[2][1:], seq[5][1:], 7
        elif len(seq) >= 2 and seq[1].startswith("#") and len(seq[1]) == 3 and "." not in seq[1]:
            num, den, skip = seq[1][1], seq[1][2], 2
        if num is None or "." in num or "." in den:
            return None
        p, q = int(num), int(den)
        if not (0 < p < q):
            return None
        after = t[self.pos + skip] if self.pos + skip < len(t) else Tok("end", "")
        if after.kind in ("num", "var", "func", "cmd") or (after.kind == "op" and after.text in "(^"):
            return None
        self.pos = save + skip
        return whole + sympy.Rational(p, q)

    def unary(self) -> Any:
        if self.peek().kind == "op" and self.peek().text in "+-":
            self.enter()
            neg = self.next().text == "-"
            v = self.unary()
            self.depth -= 1
            return -_expr(v) if neg else v
        return self.power()

    def power(self) -> Any:
        self.enter()
        base = self.postfix()
        if self.at("op", "^"):
            self.next()
            exp = self.exponent()
            base = make_pow(base, exp)
            while self.at("op", "!"):
                self.next()
                base = _factorial(base)
        self.depth -= 1
        return base

    def exponent(self) -> Any:
        """The exponent after '^': a braced group, or a single signed atom (x^2, x^-1, 2^n)."""
        if self.at("op", "{"):
            return self.postfix()
        if self.peek().kind == "op" and self.peek().text in "+-":
            neg = self.next().text == "-"
            v = self.exponent()
            return -_expr(v) if neg else v
        return self.power()  # x^23: the whole literal (ASCII reading; LaTeX would typeset x^2 3)

    def postfix(self) -> Any:
        v = self.primary()
        while True:
            if self.at("op", "!"):
                self.next()
                v = _factorial(v)
            elif self.at("op", "_") and isinstance(v, sympy.Symbol):
                self.next()
                sub = self.next()
                if sub.kind == "op" and sub.text == "{":
                    parts = []
                    while not self.at("op", "}"):
                        tt = self.next()
                        if tt.kind not in ("num", "var") or len(parts) > 8:
                            raise ParseError("subscript not accepted")
                        parts.append(tt.text)
                    self.next()
                    name = "".join(parts)
                elif sub.kind in ("num", "var"):
                    name = sub.text
                else:
                    raise ParseError("subscript not accepted")
                v = sympy.Symbol(f"{v.name}_{name}")
            else:
                return v

    def primary(self) -> Any:
        t = self.next()
        if t.kind == "num":
            return _number(t.text)
        if t.kind == "var":
            return {"e": sympy.E, "i": sympy.I}.get(t.text, sympy.Symbol(t.text))
        if t.kind == "func":
            return self.function(t.text)
        if t.kind == "cmd":
            return self.command(t.text)
        if t.kind == "env_begin":
            return self.matrix(t.text)
        if t.kind == "op":
            if t.text == "(" or t.text == "[":
                return self.bracketed(t.text)
            if t.text == "{":
                v = self.item()
                self.expect("op", "}")
                return v
            if t.text == "{set":
                if self.at("op", "}set"):
                    self.next()
                    return SetOf((), braces=True)
                items = self.item_list(closers=("}set",))
                self.expect("op", "}set")
                return SetOf(tuple(items), braces=True)
            if t.text == "|":
                self.abs_depth += 1
                v = self.expr()
                self.abs_depth -= 1
                self.expect("op", "|")
                return sympy.Abs(_expr(v))
            if t.text in ("lfloor", "lceil"):
                v = self.expr()
                self.expect("op", "rfloor" if t.text == "lfloor" else "rceil")
                return (sympy.floor if t.text == "lfloor" else sympy.ceiling)(_expr(v))
        raise ParseError(f"unexpected {t.text!r}")

    def bracketed(self, left: str) -> Any:
        self.enter()
        items = self.item_list(closers=(")", "]"))
        close = self.next()
        if close.kind != "op" or close.text not in (")", "]"):
            raise ParseError(f"expected ')' or ']', got {close.text!r}")
        self.depth -= 1
        if len(items) == 1 and ((left, close.text) in (("(", ")"), ("[", "]"))):
            return items[0]  # grouping
        if len(items) == 1:
            raise ParseError("mismatched brackets")
        return Bracketed(left, close.text, tuple(items))

    def group(self) -> Any:
        """A braced argument `{...}` or a single token (\\frac12)."""
        if self.at("op", "{"):
            self.next()
            v = self.item()
            self.expect("op", "}")
            return v
        t = self.peek()
        if t.kind == "num" and len(t.text) > 1 and "." not in t.text:
            self.toks[self.pos] = Tok("num", t.text[1:])
            return sympy.Integer(int(t.text[0]))
        return self.primary()

    def function(self, name: str) -> Any:
        fn = _FUNCS[name]
        base = None
        power = None
        if name == "log" and self.at("op", "_"):
            self.next()
            base = _expr(self.group())
        if self.at("op", "^"):
            self.next()
            power = self.exponent()
        if name == "sqrt" and self.at("op", "["):  # \sqrt[n]{x}
            self.next()
            n = self.expr()
            self.expect("op", "]")
            arg = _expr(self.group())
            value = make_pow(arg, make_pow(n, -1))
        else:
            if self.at("op", "(") or self.at("op", "{"):
                arg = _expr(self.primary() if self.at("op", "(") else self.group())
            elif name == "sqrt":
                arg = _expr(self.group())
            else:  # \sin 2x = sin(2x): an implicit product of atoms, up to an operator or another function
                arg = _expr(self.power())
                while self._starts_factor() and self.peek().kind in ("num", "var", "cmd"):
                    arg = sympy.Mul(arg, _expr(self.power()))
            if name == "exp":
                value = make_pow(sympy.E, arg)
            elif name == "log" and base is not None:
                value = sympy.log(arg, base)
            else:
                value = fn(arg)
        if power is not None:
            value = make_pow(value, power)
        return value

    def command(self, name: str) -> Any:
        if name in ("frac", "cfrac"):
            num = _expr(self.group())
            den = _expr(self.group())
            return sympy.Mul(num, make_pow(den, -1))
        if name == "binom":
            n, k = _expr(self.group()), _expr(self.group())
            if any(a.is_Integer and abs(int(a)) > MAX_BINOMIAL for a in (n, k)):
                raise TooComplex("binomial argument too large")
            return sympy.binomial(n, k)
        if name == "pi":
            return sympy.pi
        if name in ("infty", "infinity"):
            return sympy.oo
        if name in ("emptyset", "varnothing"):
            return SetOf((), braces=True)
        if name in _GREEK:
            return sympy.Symbol(name)
        raise ParseError(f"command \\{name} not accepted")

    def matrix(self, env: str) -> MatrixOf:
        rows: list[tuple[Any, ...]] = []
        cells: list[Any] = []
        while True:
            if self.at("env_end"):
                end = self.next()
                if end.text != env:
                    raise ParseError("mismatched \\begin/\\end")
                break
            cells.append(self.item())
            if self.at("op", "&"):
                self.next()
            elif self.at("op", "row"):
                self.next()
                rows.append(tuple(cells))
                cells = []
            elif not self.at("env_end"):
                raise ParseError(f"unexpected {self.peek().text!r} in a matrix")
        if cells:
            rows.append(tuple(cells))
        if not rows or len({len(r) for r in rows}) != 1:
            raise ParseError("ragged matrix")
        return MatrixOf(tuple(rows))


def _factorial(v: Any) -> sympy.Basic:
    v = _expr(v)
    if v.is_Integer:
        if int(v) > MAX_FACTORIAL:
            raise TooComplex("factorial argument too large")
        if int(v) < 0:
            raise ParseError("factorial of a negative integer")
    elif v.is_number:
        raise ParseError("factorial of a non-integer")
    return sympy.factorial(v)


def _lone_symbol(v: Any) -> bool:
    return isinstance(v, sympy.Symbol)


def _simplify_relation(ops: tuple[str, ...], terms: tuple[Any, ...]) -> Any:
    """`x = v` / `x \\in S` -> v / S; `x > a`, `a < x <= b` -> intervals; otherwise a Relation."""
    if len(ops) == 1 and ops[0] in ("=", "in") and _lone_symbol(terms[0]):
        return terms[1]
    if len(ops) == 1 and ops[0] == "=" and isinstance(terms[0], Bracketed) and all(map(_lone_symbol, terms[0].items)):
        return terms[1]  # (x, y) = (2, -1)
    if len(ops) == 1 and ops[0] == "in":
        raise ParseError("'\\in' needs a variable on its left")
    oo = sympy.oo
    if len(ops) == 1 and ops[0] in ("<", ">", "<=", ">=") and _lone_symbol(terms[0]) \
            and isinstance(terms[1], sympy.Basic) and terms[1].is_number:
        a = terms[1]
        if ops[0] in (">", ">="):
            return Bracketed("(" if ops[0] == ">" else "[", ")", (a, oo))
        return Bracketed("(", ")" if ops[0] == "<" else "]", (-oo, a))
    if len(ops) == 2 and _lone_symbol(terms[1]) and all(isinstance(t, sympy.Basic) and t.is_number
                                                        for t in (terms[0], terms[2])):
        if ops[0] in ("<", "<=") and ops[1] in ("<", "<="):
            return Bracketed("(" if ops[0] == "<" else "[", ")" if ops[1] == "<" else "]", (terms[0], terms[2]))
        if ops[0] in (">", ">=") and ops[1] in (">", ">="):
            return Bracketed("(" if ops[1] == ">" else "[", ")" if ops[0] == ">" else "]", (terms[2], terms[0]))
    return Relation(ops, terms)


def _split_pm(toks: list[Tok]) -> tuple[list[Tok], list[Tok]] | None:
    """A single top-level \\pm / \\mp: the two token lists with + and - (in that order)."""
    idx = [k for k, t in enumerate(toks) if t.kind == "op" and t.text in ("pm", "mp")]
    if not idx:
        return None
    if len(idx) > 1:
        raise ParseError("more than one \\pm")
    k = idx[0]
    first, second = ("+", "-") if toks[k].text == "pm" else ("-", "+")
    return (toks[:k] + [Tok("op", first)] + toks[k + 1:], toks[:k] + [Tok("op", second)] + toks[k + 1:])


_TEXT_CHARS = re.compile(r"[A-Za-z][A-Za-z0-9 ,.'()\-]*")


def _is_text(s: str) -> bool:
    """Plain words (letters, digits, spaces, , . ' ( ) -) with a run of 3+ letters that is not a known
    function/constant name make a text answer ('even', 'Monday', 'no solution')."""
    if not _TEXT_CHARS.fullmatch(s):
        return False
    known = set(_FUNCS) | {"pi", "infty", "inf", "and", "or", "frac", "sqrt", "cdot", "times", "begin", "end",
                           "pmatrix", "bmatrix", "vmatrix", "matrix", "binom", "infinity", "emptyset",
                           "varnothing", "lfloor", "rfloor", "lceil", "rceil", "cup", "div", "leq", "geq",
                           "neq", "langle", "rangle", "lvert", "rvert", "vert", "leqslant", "geqslant", "cfrac",
                           "colon", "smallmatrix", "array", "Bmatrix"} | set(_GREEK)
    word = []
    for c in s + " ":
        if c.isalpha() and c.isascii():
            word.append(c)
            continue
        if len(word) >= 3 and "".join(word) not in known:
            return True
        word = []
    return False


def parse_answer(s: str) -> Any:
    """Parse a normalised answer into a sympy expression or a `values` record.

    Raises ParseError (outside the accepted subset) or TooComplex (a size limit). Words that are not math
    (e.g. 'even', 'Monday') give a `Text` value. Never evaluates the input as code.
    """
    if not s.strip():
        raise ParseError("empty answer")
    if _is_text(s):
        return Text(" ".join(s.lower().split()))
    toks = tokenize(s)
    pm = _split_pm(toks)
    if pm is not None:
        return SetOf((_Parser(pm[0]).answer(), _Parser(pm[1]).answer()), braces=False)
    if len(toks) == 2 and toks[0].kind == "var" and toks[0].text.isupper():
        return Text(toks[0].text.lower())  # a multiple-choice letter (A-E) or a named point
    return _Parser(toks).answer()
