"""A small LaTeX / plain-text math expression parser: answer text -> a tree of tuples.

Why our own parser instead of sympy's LaTeX parser: answers written by models mix LaTeX and plain text
(`2\\sqrt{3}x`, `\\frac12`, `3x^2 - 1`, `\\sin^2 x`), sympy's parser needs antlr and is slow, and `sympify` on
raw text runs `eval`. Here the text becomes a tree of tuples; the tree is evaluated in-process with exact
rationals where possible (so `0.5 == \\frac{1}{2}` needs no sympy), with complex floats otherwise, and every
step is size-bounded so no input can make the evaluator hang (`reward_models.math_eval`). Only when the numbers
cannot decide is the tree turned into sympy code (`math_sympy.to_sympy`) and checked in the worker process.

Node shapes: ("num", Fraction), ("sym", name), ("const", "pi" | "e" | "i" | "oo"),
("add"|"sub"|"mul"|"div"|"pow", a, b), ("neg", a), ("fn", name, a), ("root", a, n), ("log", a, base), ("fact",
a), ("binom", n, k). Conventions: `e` is Euler's number, `i` the imaginary unit, `\\log` the natural log,
`2\\frac{1}{2}` a mixed number (5/2), `x^23` is x^23 (plain-text reading, not LaTeX's x^2 3), juxtaposition
multiplies (`2x`, `xy`, `2(x+1)`).
"""

from __future__ import annotations

import re
from fractions import Fraction

# the evaluator's names, also read from here
from reward_models.math_eval import MAX_BITS, EvalError, Number, Undefined, evaluate, is_huge

__all__ = [
    "FUNCTIONS",
    "MAX_BITS",
    "MAX_DEPTH",
    "EvalError",
    "ExprError",
    "Number",
    "Undefined",
    "evaluate",
    "free_symbols",
    "infinity_sign",
    "is_huge",
    "parse",
    "tokenize",
]


MAX_DEPTH = 60  # nesting depth the recursive-descent parser accepts


class ExprError(ValueError):
    """The text is not an expression this parser understands (the caller falls back to text comparison)."""


FUNCTIONS = set(("sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh ln log exp sqrt abs floor ceil").split())
GREEK = set(
    (
        "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho "
        "sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega"
    ).split()
)
# plain-text names recognised inside a run of letters, longest first
WORDS = sorted(FUNCTIONS | {"pi"}, key=len, reverse=True)
INVERSE = {"sin": "arcsin", "cos": "arccos", "tan": "arctan"}

_TOKEN = re.compile(
    r"(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<cmd>\\[a-zA-Z]+|\\[{}|])"
    r"|(?P<word>[a-zA-Z]+)"
    r"|(?P<op>[-+*/^_!()\[\]{}|',=<>&;:])"
    r"|(?P<space>\s+)"
)
_OPS = {
    "cdot": "*",
    "times": "*",
    "ast": "*",
    "div": "/",
    "vert": "|",
    "lvert": "|",
    "rvert": "|",
    "mid": "|",
}
_OPS.update({"lfloor": "lfloor", "rfloor": "rfloor", "lceil": "lceil", "rceil": "rceil", "|": "|"})
_COMMANDS = {"frac": "frac", "dfrac": "frac", "tfrac": "frac", "cfrac": "frac", "sqrt": "sqrt"}
_COMMANDS.update({"binom": "binom", "dbinom": "binom", "tbinom": "binom"})
_IGNORED = {"left", "right", "displaystyle", "big", "Big", "bigl", "bigr", "Bigl", "Bigr", "mathrm", "limits"}


def tokenize(text: str) -> list[tuple[str, str]]:
    """Text -> [(kind, value)], kind in num, name, fn, const, cmd, op. ExprError on anything unknown."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExprError(f"unexpected character {text[pos]!r}")
        pos = m.end()
        kind, value = m.lastgroup, m.group()
        if kind == "space":
            continue
        if kind == "num":
            out.append(("num", value))
        elif kind == "op":
            out.append(("op", value))
        elif kind == "word":
            out.extend(_split_word(value))
        else:
            name = value[1:]
            if name in _IGNORED:
                continue
            if name in _COMMANDS:
                out.append(("cmd", _COMMANDS[name]))
            elif name in FUNCTIONS:
                out.append(("fn", name))
            elif name in _OPS:
                out.append(("op", _OPS[name]))
            elif name == "pi":
                out.append(("const", "pi"))
            elif name == "infty":
                out.append(("const", "oo"))
            elif name == "imath":
                out.append(("const", "i"))
            elif name in GREEK:
                out.append(("name", name))
            else:
                raise ExprError(f"unsupported command \\{name}")
    return out


def _split_word(word: str) -> list[tuple[str, str]]:
    """`sinx` -> sin x, `xy` -> x y, `pi` -> pi; 3+ letters not made of known names are prose."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(word):
        for name in WORDS:
            if word.startswith(name, i):
                out.append(("const", "pi") if name == "pi" else ("fn", name))
                i += len(name)
                break
        else:
            out.append(("name", word[i]))
            i += 1
    letters = sum(1 for kind, _ in out if kind == "name")
    if len(word) >= 3 and letters == len(word) or letters >= 3:
        raise ExprError(f"{word!r} reads as a word, not a product of variables")
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.abs_depth = 0

    def peek(self, k: int = 0) -> tuple[str, str]:
        j = self.i + k
        return self.tokens[j] if j < len(self.tokens) else ("end", "")

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        kind, got = self.take()
        if kind != "op" or got != value:
            raise ExprError(f"expected {value!r}, got {got!r}")

    def parse(self) -> tuple:
        if not self.tokens:
            raise ExprError("empty expression")
        node = self.expr()
        if self.i != len(self.tokens):
            raise ExprError(f"unexpected {self.peek()[1]!r}")
        return node

    def expr(self) -> tuple:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError("nested too deeply")
        node = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            node = ("add" if op == "+" else "sub", node, self.term())
        self.depth -= 1
        return node

    def term(self) -> tuple:
        node = self.unary()
        while True:
            kind, value = self.peek()
            if kind == "op" and value in ("*", "/"):
                self.take()
                node = ("mul" if value == "*" else "div", node, self.unary())
            elif self.starts_primary():
                node = ("mul", node, self.power())
            else:
                return node

    def unary(self) -> tuple:
        if self.peek() == ("op", "-"):
            self.take()
            return ("neg", self.unary())
        if self.peek() == ("op", "+"):
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> tuple:
        base = self.postfix(self.primary())
        if self.peek() == ("op", "^"):
            self.take()
            return ("pow", base, self.exponent())
        return base

    def exponent(self) -> tuple:
        if self.peek() == ("op", "-"):
            self.take()
            return ("neg", self.exponent())
        if self.peek() == ("op", "+"):
            self.take()
            return self.exponent()
        return self.power()  # right-associative: 2^3^2 = 2^(3^2); `^{...}` is a primary group

    def postfix(self, node: tuple) -> tuple:
        while self.peek() == ("op", "!"):
            self.take()
            node = ("fact", node)
        return node

    def starts_primary(self) -> bool:
        kind, value = self.peek()
        if kind in ("name", "fn", "const", "cmd"):
            return True
        if kind == "op":
            return value in ("(", "[", "{", "lfloor", "lceil") or (value == "|" and self.abs_depth == 0)
        return False  # a number right after a number ("2 3") is not a product

    def group(self) -> tuple:
        """A `{...}` argument (the normaliser braces every `\\frac`/`\\sqrt` argument) or one primary."""
        if self.peek() == ("op", "{"):
            self.take()
            node = self.expr()
            self.expect("}")
            return node
        return self.primary()

    def primary(self) -> tuple:
        kind, value = self.take()
        if kind == "num":
            return self.number(value)
        if kind == "const":
            return ("const", value)
        if kind == "name":
            return self.symbol(value)
        if kind == "fn":
            return self.function(value)
        if kind == "cmd":
            if value == "frac":
                return ("div", self.group(), self.group())
            if value == "binom":
                return ("binom", self.group(), self.group())
            if value == "sqrt":
                index = None
                if self.peek() == ("op", "["):
                    self.take()
                    index = self.expr()
                    self.expect("]")
                arg = self.group()
                return ("root", arg, index) if index is not None else ("fn", "sqrt", arg)
        if kind == "op":
            closing = {"(": ")", "[": "]", "{": "}", "lfloor": "rfloor", "lceil": "rceil", "|": "|"}.get(value)
            if closing is not None:
                if value == "|":
                    self.abs_depth += 1
                node = self.expr()
                self.expect(closing)
                if value == "|":
                    self.abs_depth -= 1
                    return ("fn", "abs", node)
                if value in ("lfloor", "lceil"):
                    return ("fn", "floor" if value == "lfloor" else "ceil", node)
                return node
        raise ExprError(f"unexpected {value!r}")

    def number(self, text: str) -> tuple:
        mantissa, _, exp = text.lower().partition("e")
        if exp and abs(int(exp)) > 400:
            raise ExprError("exponent too large")
        try:
            value = Fraction(mantissa) * Fraction(10) ** int(exp or 0)
        except (ValueError, ZeroDivisionError) as e:  # more digits than int() accepts
            raise ExprError(str(e)) from None
        node = ("num", value)
        # A mixed number: an integer directly followed by \frac{int}{int} is 2 1/2 = 5/2, not 2 * 1/2.
        frac = self._mixed_fraction() if value.denominator == 1 and "." not in text else None
        if frac is not None:
            self.i += 7
            return ("add", node, ("num", frac))
        return node

    def _mixed_fraction(self) -> Fraction | None:
        t = self.tokens[self.i : self.i + 7]
        shape = [("cmd", "frac"), ("op", "{"), "num", ("op", "}"), ("op", "{"), "num", ("op", "}")]
        if len(t) != 7:
            return None
        for tok, want in zip(t, shape):
            if (tok[0] != "num" or "." in tok[1]) if want == "num" else tok != want:
                return None
        num, den = int(t[2][1]), int(t[5][1])
        return Fraction(num, den) if den and 0 < num < den else None

    def symbol(self, name: str) -> tuple:
        if name in ("e", "i") and self.peek() != ("op", "_"):
            return ("const", name)
        if self.peek() == ("op", "_"):
            self.take()
            if self.peek() == ("op", "{"):
                self.take()
                parts = []
                while self.peek() not in (("op", "}"), ("end", "")):
                    parts.append(self.take()[1])
                self.expect("}")
                sub = "".join(parts)
            else:
                sub = self.take()[1]
            if not re.fullmatch(r"\w+", sub):
                raise ExprError(f"unsupported subscript {sub!r}")
            name = f"{name}_{sub}"
        while self.peek() == ("op", "'"):
            self.take()
            name += "_prime"
        return ("sym", name)

    def function(self, name: str) -> tuple:
        power = None
        if self.peek() == ("op", "^"):  # \sin^2 x = (\sin x)^2, \sin^{-1} x = \arcsin x
            self.take()
            power = self.exponent()
            if power == ("neg", ("num", Fraction(1))) and name in INVERSE:
                name, power = INVERSE[name], None
        base = None
        if name == "log" and self.peek() == ("op", "_"):
            self.take()
            base = self.group()
        if self.peek() == ("op", "("):
            self.take()
            arg = self.expr()
            self.expect(")")
        else:  # \sin 2x = \sin(2x): the argument is the run of juxtaposed factors that follows
            arg = self.power()
            while self.peek()[0] in ("num", "name", "const"):
                arg = ("mul", arg, self.power())
        node = ("log", arg, base) if base is not None else ("fn", name, arg)
        return ("pow", node, power) if power is not None else node


def parse(text: str) -> tuple:
    """Normalised answer text -> expression tree. Raises ExprError when it is not an expression."""
    try:
        return _Parser(tokenize(text)).parse()
    except RecursionError:
        raise ExprError("nested too deeply") from None


def free_symbols(node: tuple) -> set[str]:
    if node[0] == "sym":
        return {node[1]}
    out: set[str] = set()
    for child in node[1:]:
        if isinstance(child, tuple):
            out |= free_symbols(child)
    return out


def infinity_sign(node: tuple) -> int:
    """+1 for `\\infty`, -1 for `-\\infty`, else 0 (interval endpoints compare these structurally)."""
    if node == ("const", "oo"):
        return 1
    if node[0] == "neg":
        return -infinity_sign(node[1])
    return 0
