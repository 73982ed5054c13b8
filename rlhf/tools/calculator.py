"""Exact arithmetic for a policy to call: `+ - * / // % **` and parentheses on integers, decimals and fractions.

The expression is parsed with `ast` and walked over an allow-list of node types; nothing is ever passed to `eval`.
Every value is a `fractions.Fraction`, so `0.1 + 0.2` is exactly `0.3` and `1/3` stays `1/3`. Bounds keep every call
fast: the input length, the size of every intermediate number (`max_bits`) and the exponent of `**` are checked before
the work is done, so `9**9**9` is an error, not a hang."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from fractions import Fraction

from rlhf.tools.base import ToolError, text_argument

BINARY: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
UNARY: dict[type, Callable[[Fraction], Fraction]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# what models write for the same operators
SPELLINGS = {"×": "*", "·": "*", "÷": "/", "−": "-", "^": "**"}


class Calculator:
    """The `calculator` tool: `<calculator>347*28</calculator>` -> `9716`.

    Results are exact: an integer, a finite decimal (`7/4` -> `1.75`) or a fraction with its decimal value
    (`1/3` -> `1/3 ≈ 0.333333333333`). `^` is read as a power and `×`/`÷` as `*`/`/`; a trailing `=` is ignored.
    Errors (division by zero, a number past `max_bits`, an unsupported expression) raise `ToolError`."""

    name = "calculator"
    description = "exact arithmetic: + - * / // % ** and parentheses on integers, decimals and fractions"
    argument = "expression"
    example = "347*28"

    def __init__(self, max_bits: int = 4096, max_exponent: int = 4096, max_length: int = 500, digits: int = 12):
        self.max_bits = max_bits
        self.max_exponent = max_exponent
        self.max_length = max_length
        self.digits = digits

    def __call__(self, arguments: str) -> str:
        return format_number(self.evaluate(arguments), self.digits)

    def evaluate(self, arguments: str) -> Fraction:
        """The exact value of the expression text; raises ToolError naming what is wrong."""
        text = text_argument(arguments, self.argument).strip().rstrip("=").strip()
        for spelling, op in SPELLINGS.items():
            text = text.replace(spelling, op)
        if not text:
            raise ToolError("empty expression; write one such as 347*28")
        if len(text) > self.max_length:
            raise ToolError(f"expression of {len(text)} characters; the limit is {self.max_length}")
        try:
            tree = ast.parse(text, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            raise ToolError(f"cannot parse {text[:100]!r}: use numbers, + - * / // % ** and parentheses") from e
        try:
            return self._eval(tree.body)
        except RecursionError as e:
            raise ToolError("expression nested too deeply") from e

    def _eval(self, node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return self._check(_exact(node.value))
        if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
            return UNARY[type(node.op)](self._eval(node.operand))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            return self._power(self._eval(node.left), self._eval(node.right))
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            left, right = self._eval(node.left), self._eval(node.right)
            if right == 0 and type(node.op) in (ast.Div, ast.FloorDiv, ast.Mod):
                raise ToolError("division by zero")
            return self._check(BINARY[type(node.op)](left, right))
        raise ToolError(f"unsupported expression {ast.unparse(node)!r}: only numbers, + - * / // % ** and parentheses")

    def _power(self, base: Fraction, exponent: Fraction) -> Fraction:
        if exponent.denominator != 1:
            raise ToolError(f"non-integer exponent {exponent}: exact arithmetic supports integer powers only")
        n = int(exponent)
        if abs(n) > self.max_exponent:
            raise ToolError(f"exponent {n} is past the limit of {self.max_exponent}")
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if bits > 1 and (bits - 1) * abs(n) > self.max_bits:
            raise ToolError(f"a {bits}-bit number to the power {n} is past the limit of {self.max_bits} bits")
        if base == 0 and n < 0:
            raise ToolError("division by zero (zero to a negative power)")
        return self._check(base**n)

    def _check(self, value: Fraction) -> Fraction:
        if max(value.numerator.bit_length(), value.denominator.bit_length()) > self.max_bits:
            raise ToolError(f"a number past the limit of {self.max_bits} bits")
        return value


def _exact(value: int | float) -> Fraction:
    """A literal as an exact fraction: `0.1` is 1/10 (its shortest decimal form), not the nearest binary float."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("number too large")
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


def format_number(value: Fraction, digits: int = 12) -> str:
    """`9716`, `1.75`, `-0.125` (finite decimals exactly) or `1/3 ≈ 0.333333333333` (`digits` significant digits)."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    twos, fives = _multiplicity(den, 2), _multiplicity(den, 5)
    if 2**twos * 5**fives == den:  # a finite decimal: scale to an integer of 10**places
        places = max(twos, fives)
        scaled = abs(value.numerator) * (10**places // den)
        whole, frac = divmod(scaled, 10**places)
        return f"{'-' if value < 0 else ''}{whole}.{frac:0{places}d}"
    return f"{value} ≈ {float(value):.{digits}g}" if abs(value) < 1e300 else str(value)


def _multiplicity(n: int, p: int) -> int:
    count = 0
    while n % p == 0:
        n //= p
        count += 1
    return count
