"""A small LaTeX / plain-text math expression parser with a bounded numeric evaluator.

Why our own parser instead of sympy's LaTeX parser: answers written by models mix LaTeX and plain text
(`2\\sqrt{3}x`, `\\frac12`, `3x^2 - 1`, `\\sin^2 x`), sympy's parser needs antlr and is slow, and `sympify` on
raw text runs `eval`. Here the text becomes a tree of tuples; the tree is evaluated in-process with exact
rationals where possible (so `0.5 == \\frac{1}{2}` needs no sympy), with complex floats otherwise, and every
step is size-bounded so no input can make the evaluator hang. Only when the numbers cannot decide is the tree
turned into sympy code (`to_sympy`) and checked in the worker process (`reward_models.math_sympy`).

Node shapes: ("num", Fraction), ("sym", name), ("const", "pi" | "e" | "i" | "oo"),
("add"|"sub"|"mul"|"div"|"pow", a, b), ("neg", a), ("fn", name, a), ("root", a, n), ("log", a, base), ("fact",
a), ("binom", n, k). Conventions: `e` is Euler's number, `i` the imaginary unit, `\\log` the natural log,
`2\\frac{1}{2}` a mixed number (5/2), `x^23` is x^23 (plain-text reading, not LaTeX's x^2 3), juxtaposition
multiplies (`2x`, `xy`, `2(x+1)`).
"""

from __future__ import annotations

import cmath
import math
import re
from fractions import Fraction

MAX_BITS = 20_000  # exact rationals larger than this are not computed in-process (sympy or nothing decides)
MAX_DEPTH = 60  # nesting depth the recursive-descent parser accepts


class ExprError(ValueError):
    """The text is not an expression this parser understands (the caller falls back to text comparison)."""


class EvalError(ArithmeticError):
    """No finite value here: division by zero, a domain error, overflow, an unknown symbol."""


class Undefined(EvalError):
    """Division by zero, 0 to a negative power: no value at all (a constant like 1/0 equals nothing)."""


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


# ---------------------------------------------------------------- numeric evaluation

Number = Fraction | complex


def _exact(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise EvalError("number too large")
    return value


def _complex(value: Number) -> complex:
    try:
        z = complex(value)
    except OverflowError:
        raise EvalError("overflow") from None
    if not (math.isfinite(z.real) and math.isfinite(z.imag)):
        raise EvalError("not finite")
    return z


def _int_root(k: int, n: int) -> int | None:
    """The exact integer n-th root of k >= 0, or None."""
    if k < 2:
        return k
    if k.bit_length() > 1000:
        return None
    r = math.isqrt(k) if n == 2 else round(k ** (1.0 / n))
    for c in (r - 1, r, r + 1):
        if c >= 0 and c**n == k:
            return c
    return None


def _root(x: Number, n: int) -> Number:
    if isinstance(x, Fraction):
        if x >= 0:
            num, den = _int_root(x.numerator, n), _int_root(x.denominator, n)
            if num is not None and den is not None:
                return Fraction(num, den)
            return _complex(float(x) ** (1.0 / n)) if x.numerator.bit_length() < 1000 else _complex(x) ** (1.0 / n)
        if n % 2 == 1:  # the real cube root of a negative number, as written \sqrt[3]{-8} = -2
            r = _root(-x, n)
            return -r
    return _complex(x) ** (1.0 / n)


def _pow(a: Number, b: Number) -> Number:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        if b.denominator == 1:
            e = b.numerator
            if a == 0 and e < 0:
                raise Undefined("division by zero")
            bits = max(a.numerator.bit_length(), a.denominator.bit_length(), 1)
            if a in (1, -1):
                return a ** (e % 2)
            if abs(e) * bits <= MAX_BITS:
                return _exact(a**e)
        elif a > 0 and b.denominator <= 12:
            r = _root(a, b.denominator)
            if isinstance(r, Fraction):
                return _pow(r, Fraction(b.numerator))
    za, zb = _complex(a), _complex(b)
    if za == 0:
        if zb.real > 0:
            return Fraction(0)
        raise Undefined("0 to a non-positive power")
    try:
        if za.imag == 0 and zb.imag == 0 and za.real > 0:
            return _complex(za.real**zb.real)
        return _complex(za**zb)
    except (OverflowError, ZeroDivisionError, ValueError):
        raise EvalError("overflow") from None


def _fn(name: str, x: Number) -> Number:
    if name == "sqrt":
        return _root(x, 2)
    if name == "abs":
        return abs(x) if isinstance(x, Fraction) else _complex(abs(_complex(x)))
    if name in ("floor", "ceil"):
        if not isinstance(x, Fraction):
            z = _complex(x)
            if abs(z.imag) > 1e-12:
                raise EvalError("floor of a complex number")
            x = z.real
        return Fraction(math.floor(x) if name == "floor" else math.ceil(x))
    if isinstance(x, Fraction) and x == 0 and name in ("sin", "tan", "arcsin", "arctan", "sinh", "tanh"):
        return Fraction(0)
    if isinstance(x, Fraction) and x == 1 and name in ("ln", "log"):
        return Fraction(0)
    z = _complex(x)
    try:
        if name == "cot":
            return _complex(1 / cmath.tan(z))
        if name == "sec":
            return _complex(1 / cmath.cos(z))
        if name == "csc":
            return _complex(1 / cmath.sin(z))
        if name in ("ln", "log"):
            return _complex(cmath.log(z))
        func = {"arcsin": cmath.asin, "arccos": cmath.acos, "arctan": cmath.atan}.get(name) or getattr(cmath, name)
        return _complex(func(z))
    except (OverflowError, ZeroDivisionError, ValueError):
        raise EvalError(f"{name} undefined here") from None


def _factorial(x: Number) -> Number:
    if isinstance(x, Fraction) and x.denominator == 1:
        if x < 0:
            raise EvalError("factorial of a negative integer")
        if x > 1500:
            raise EvalError("factorial too large")
        return Fraction(math.factorial(int(x)))
    z = _complex(x)
    if z.imag != 0 or z.real > 170:
        raise EvalError("factorial out of range")
    try:
        return _complex(math.gamma(z.real + 1))
    except (ValueError, OverflowError):
        raise EvalError("factorial undefined") from None


def evaluate(node: tuple, env: dict[str, complex] | None = None) -> Number:
    """The value of the tree, exact (Fraction) where the arithmetic allows, else a complex float.

    Raises EvalError when there is no finite value (and never runs long: exact powers are size-capped)."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "sym":
        if env is None or node[1] not in env:
            raise EvalError(f"free symbol {node[1]}")
        return env[node[1]]
    if kind == "const":
        if node[1] == "oo":  # a bare +-infinity is compared structurally; inside arithmetic it is no number
            raise Undefined("infinity")
        return {"pi": complex(math.pi), "e": complex(math.e), "i": 1j}[node[1]]
    if kind == "neg":
        return -evaluate(node[1], env)
    if kind in ("add", "sub", "mul", "div"):
        a, b = evaluate(node[1], env), evaluate(node[2], env)
        if kind == "div" and b == 0:
            raise Undefined("division by zero")
        if isinstance(a, Fraction) and isinstance(b, Fraction):
            return _exact({"add": a + b, "sub": a - b, "mul": a * b, "div": a / b if kind == "div" else 0}[kind])
        za, zb = _complex(a), _complex(b)
        return _complex({"add": za + zb, "sub": za - zb, "mul": za * zb, "div": za / zb if kind == "div" else 0}[kind])
    if kind == "pow":
        return _pow(evaluate(node[1], env), evaluate(node[2], env))
    if kind == "fn":
        return _fn(node[1], evaluate(node[2], env))
    if kind == "root":
        n = evaluate(node[2], env)
        if not (isinstance(n, Fraction) and n.denominator == 1 and 1 <= n <= 1000):
            return _pow(evaluate(node[1], env), 1 / _complex(n) if n != 0 else _complex(0))
        return _root(evaluate(node[1], env), int(n))
    if kind == "log":
        x, base = _fn("ln", evaluate(node[1], env)), _fn("ln", evaluate(node[2], env))
        if base == 0:
            raise EvalError("log base 1")
        if isinstance(x, Fraction) and x == 0:
            return Fraction(0)
        return _complex(_complex(x) / _complex(base))
    if kind == "fact":
        return _factorial(evaluate(node[1], env))
    if kind == "binom":
        n, k = evaluate(node[1], env), evaluate(node[2], env)
        if isinstance(n, Fraction) and isinstance(k, Fraction) and n.denominator == k.denominator == 1 and n <= 5000:
            return Fraction(math.comb(int(n), int(k))) if 0 <= k and n >= 0 else Fraction(0)
        return _factorial(n) / _complex(_factorial(k)) / _complex(_factorial(_complex(n) - _complex(k)))
    raise EvalError(f"unknown node {kind}")


def _real(node: tuple) -> float | None:
    try:
        z = _complex(evaluate(node))
    except (ArithmeticError, ValueError, TypeError):
        return None
    return z.real if abs(z.imag) <= 1e-12 * max(1.0, abs(z.real)) else None


def is_huge(node: tuple, positive: bool = False) -> bool:
    """True when the constant certainly has |value| > 1e300 (with positive=True: value > 1e300).

    Why: `9^{9^{9^9}}` or `100000!` cannot be computed in-process, and sympy would run out its timeout, yet
    such a value certainly differs from anything that evaluates to a float. Only the outermost operation is
    trusted (`2^{10^5} - 2^{10^5}` is 0, not huge)."""
    kind = node[0]
    if kind == "neg":
        return not positive and is_huge(node[1])
    if kind == "num":
        return node[1] > 10**300 or (not positive and node[1] < -(10**300))
    if kind == "pow" or (kind == "fn" and node[1] == "exp"):
        base = _real(node[1]) if kind == "pow" else math.e
        if base is None or abs(base) <= 1.000001 or (positive and base < 0):
            return False
        exponent_node = node[2]
        exponent = _real(exponent_node)
        if exponent is not None:
            return exponent * math.log(abs(base)) > 700 and (base > 0 or not positive)
        return is_huge(exponent_node, positive=True)
    if kind == "fact":
        n = _real(node[1])
        return (n is not None and n > 171) or is_huge(node[1], positive=True)
    return False


# ---------------------------------------------------------------- sympy code for the worker

_SYMPY_FN = {
    "ln": "log",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "abs": "Abs",
    "ceil": "ceiling",
}


def to_sympy(node: tuple) -> str:
    """Python source that builds the tree in sympy, using only names the worker's namespace defines."""
    kind = node[0]
    if kind == "num":
        value = node[1]
        return (
            f"Integer({value.numerator})"
            if value.denominator == 1
            else f"Rational({value.numerator},{value.denominator})"
        )
    if kind == "sym":
        return f"Symbol({node[1]!r})"
    if kind == "const":
        return {"pi": "pi", "e": "E", "i": "I", "oo": "oo"}[node[1]]
    if kind == "neg":
        return f"(-({to_sympy(node[1])}))"
    if kind in ("add", "sub", "mul", "div", "pow"):
        op = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}[kind]
        return f"(({to_sympy(node[1])}){op}({to_sympy(node[2])}))"
    if kind == "fn":
        return f"{_SYMPY_FN.get(node[1], node[1])}({to_sympy(node[2])})"
    if kind == "root":
        arg, index = to_sympy(node[1]), to_sympy(node[2])
        odd = node[2][0] == "num" and node[2][1].denominator == 1 and node[2][1].numerator % 2 == 1
        return f"real_root({arg},{index})" if odd and not free_symbols(node[1]) else f"root({arg},{index})"
    if kind == "log":
        return f"log({to_sympy(node[1])},{to_sympy(node[2])})"
    if kind == "fact":
        return f"factorial({to_sympy(node[1])})"
    if kind == "binom":
        return f"binomial({to_sympy(node[1])},{to_sympy(node[2])})"
    raise ExprError(f"unknown node {kind}")
