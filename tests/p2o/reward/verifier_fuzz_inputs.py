"""Random and adversarial verifier inputs (shared by the fuzz test and the benchmark's stress mode).

`fuzz_pairs(n, seed, canary_path)` returns n (response, gold) pairs mixing: random printable text,
random token soups over the accepted LaTeX alphabet, deep nesting, exponent towers and huge factorials,
unbalanced braces, code-like text that would touch `canary_path` (or set an environment variable) if it
were ever evaluated, very long strings, and odd Unicode.
"""
from __future__ import annotations

import random
import string

TOKENS = ["0", "1", "2", "9", "10", "3.14", ".5", "x", "y", "e", "i", "n", "+", "-", "*", "/", "^", "_", "(", ")",
          "[", "]", "{", "}", "|", ",", "=", "<", ">", "!", "&", "\\\\", "\\frac", "\\dfrac", "\\sqrt", "\\pi",
          "\\infty", "\\cdot", "\\times", "\\left(", "\\right)", "\\{", "\\}", "\\pm", "\\sin", "\\log", "\\ln",
          "\\binom", "\\text{", "\\circ", "\\%", "\\$", "\\cup", "\\le", "\\begin{pmatrix}", "\\end{pmatrix}",
          "\\lfloor", "\\rfloor", "\\boxed{", "\\fbox{", " ", "\\alpha", "\\emptyset", "e-7", "E5", "%", "$"]

TOWERS = ["10^{10^{10}}", "9^{9^{9^{9}}}", "2^{2^{2^{2^{2^{2}}}}}", "(10^{100})!", "10^{1000}!", "1000000!",
          "x^{10^{10}}", "(x+1)^{100000}", "2^{3^{4^{5}}}", "10^{-10^{10}}", "\\binom{10^{9}}{5*10^{8}}",
          "2^{2^{100}}", "(1+x)^{199}-(1-x)^{199}", "e^{e^{e^{e^{10}}}}", "\\sqrt{2}^{10^{10}}", "10^{10}!!",
          "\\frac{1}{0}", "0^0", "0^{-1}", "\\log 0", "\\infty-\\infty", "\\sin(10^{10^{5}})", "1e9999",
          "99999999999999999999999999999999999999999^{99999}", "((((((((((x))))))))))^{200}"]


def _code(canary: str) -> list[str]:
    return [
        f"__import__('os').system('touch {canary}')",
        f"__import__('pathlib').Path('{canary}').write_text('x')",
        f"open('{canary}', 'w').write('pwned')",
        "__import__('os').environ.__setitem__('P2O_FUZZ_CANARY', '1')",
        f"exec(\"open('{canary}','w')\")",
        f"eval(\"__import__('os').system('touch {canary}')\")",
        f"lambda: __import__('os').system('touch {canary}')",
        f"(lambda: open('{canary}','w'))()",
        "().__class__.__bases__[0].__subclasses__()",
        "Symbol('x').__class__.__init__.__globals__",
        f"\\boxed{{__import__('os').system('touch {canary}')}}",
        "import os; os.remove('/')",
        "${jndi:ldap://127.0.0.1/a}",
        "{{7*7}} <script>alert(1)</script> '; DROP TABLE x; --",
        "%s%s%s%n%x",
    ]


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 200)))


def _soup(rng: random.Random) -> str:
    return "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 40)))


def _nesting(rng: random.Random) -> str:
    d = rng.choice([50, 200, 1000, 5000])
    kind = rng.randrange(7)
    if kind == 0:
        return "{" * d + "1" + "}" * d
    if kind == 1:
        return "(" * d + "x" + ")" * d
    if kind == 2:
        return "\\frac{" * d + "1" + "}{2}" * d
    if kind == 3:
        return "\\sqrt{" * d + "2" + "}" * d
    if kind == 4:
        return "-" * d + "1"
    if kind == 5:
        return "|" * d + "x" + "|" * d
    return "2^" * d + "2"


def _unbalanced(rng: random.Random) -> str:
    s = _soup(rng)
    return rng.choice(["{", "}", "(", ")", "\\left(", "\\frac{", "\\begin{pmatrix}"]) * rng.randint(1, 30) + s


def _long(rng: random.Random) -> str:
    n = rng.choice([1_000, 10_000, 100_000])
    return rng.choice(["1", "x+", "\\frac{1}{2}+", "9", "(", "a"]) * (n // 2)


def _unicode(rng: random.Random) -> str:
    alphabet = "π∞√≤≥≠−×÷∪±∈∅αβ😀\u200b\x00\ufeff\u202e中文عربي\ud800"
    return "".join(rng.choice(alphabet + "0123456789+-") for _ in range(rng.randint(1, 50)))


def fuzz_answer(rng: random.Random, canary: str) -> str:
    kind = rng.randrange(9)
    if kind == 0:
        return _random_text(rng)
    if kind in (1, 2):
        return _soup(rng)
    if kind == 3:
        return _nesting(rng)
    if kind == 4:
        return rng.choice(TOWERS)
    if kind == 5:
        return _unbalanced(rng)
    if kind == 6:
        return rng.choice(_code(canary))
    if kind == 7:
        return _long(rng) if rng.random() < 0.2 else _soup(rng)
    return _unicode(rng)


def fuzz_pairs(n: int, seed: int, canary: str) -> list[tuple[str, str]]:
    """n (response, gold) pairs; most responses box the fuzz string, some are raw text."""
    rng = random.Random(seed)
    golds = ["1", "\\frac{1}{2}", "x^2+1", "(1, 2]", "\\sqrt{2}", "\\text{(C)}", "10^{10}", "42"]
    out = []
    for _ in range(n):
        a = fuzz_answer(rng, canary)
        r = rng.random()
        if r < 0.75:
            response = "Reasoning... so \\boxed{" + a + "}"
        elif r < 0.85:
            response = a
        else:
            response = "\\boxed{1} " + a
        gold = rng.choice(golds) if rng.random() < 0.9 else fuzz_answer(rng, canary)
        out.append((response, gold))
    return out
