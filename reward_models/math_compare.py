"""Is a predicted answer equal to the gold one? Structure first, then numbers, then (rarely) sympy.

Why numbers before sympy: almost every answer in GSM8K / MATH-style training is a number or a small
expression, and exact rational arithmetic (`math_eval.evaluate`) decides those in microseconds. Expressions
with variables are compared at fixed probe points with complex arithmetic (polynomial identity testing: `2x+2`
and `2(x+1)` agree everywhere, `\\sqrt{x^2}` and `x` do not at x < 0); sympy in the worker process is only
asked when the numbers cannot decide (overflow, a domain error at every probe point, agreement only to a few
digits).

Numeric tolerance: values are equal when |a - b| <= 1e-6 * max(|a|, |b|) (absolute 1e-12 near zero), EXCEPT
that two exact rationals one of which is an integer must be exactly equal, so "1000000" != "1000001" and "2"
!= "2.0000001" but "1/3" == "0.3333333" and "\\sqrt{2}" == "1.414214".
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from fractions import Fraction

from reward_models import math_eval, math_expr
from reward_models.math_normalize import VARIABLE, Answer, decimal_comma, is_name, parse_answer, text_key
from reward_models.math_sympy import sympy_check, to_sympy

REL_TOL = 1e-6
ABS_TOL = 1e-12
# fixed pseudo-random probe values; both signs, away from 0, +-1 and simple fractions
PROBES = (0.5377, -1.3077, 1.8339, 0.8622, -0.4336, 2.7694, -2.2588, 0.3188)
_NUMERIC_ERRORS = (ArithmeticError, ValueError, TypeError)


@dataclass
class Context:
    deadline: float
    rel_tol: float = REL_TOL

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def values_close(a: math_eval.Number, b: math_eval.Number, rel_tol: float = REL_TOL) -> bool:
    """Exact for rationals when one is an integer, else a relative tolerance (see the module docstring)."""
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        if a == b:
            return True
        if a.denominator == 1 or b.denominator == 1:
            return False
    za, zb = math_eval.as_complex(a), math_eval.as_complex(b)
    return abs(za - zb) <= max(rel_tol * max(abs(za), abs(zb)), ABS_TOL)


def _probe_envs(names: list[str]):
    for j in range(len(PROBES)):
        yield {n: complex(PROBES[(j + 3 * k) % len(PROBES)] + 0.1 * k) for k, n in enumerate(names)}


def _probe_equal(g: tuple, p: tuple, names: list[str], rel_tol: float) -> bool | None:
    """Identity testing at the probe points, with the same tolerance as constants; None when fewer than 4
    points could be evaluated (overflow, domain), so sympy decides."""
    agree = 0
    for env in _probe_envs(names):
        try:
            za = math_eval.as_complex(math_eval.evaluate(g, env))
            zb = math_eval.as_complex(math_eval.evaluate(p, env))
        except _NUMERIC_ERRORS:
            continue
        if abs(za - zb) > max(rel_tol * max(abs(za), abs(zb)), ABS_TOL):
            return False
        agree += 1
    return True if agree >= 4 else None


def expr_equal(g: tuple, p: tuple, ctx: Context) -> bool:
    """Two expression trees: infinities structurally, constants by value, the rest by probing, then sympy."""
    sg, sp = math_expr.infinity_sign(g), math_expr.infinity_sign(p)
    if sg or sp:
        return sg == sp
    if g == p:
        return True
    names = sorted(math_expr.free_symbols(g) | math_expr.free_symbols(p))
    if not names:
        values = []
        for node in (g, p):
            try:
                values.append(math_eval.evaluate(node))
            except math_eval.Undefined:  # 1/0 is not a number, so it equals nothing
                return False
            except _NUMERIC_ERRORS:
                values.append(None)
        if None not in values:
            try:
                return values_close(values[0], values[1], ctx.rel_tol)
            except _NUMERIC_ERRORS:
                pass
    else:
        verdict = _probe_equal(g, p, names, ctx.rel_tol)
        if verdict is not None:
            return verdict
    for huge, other in ((g, p), (p, g)):
        if not math_expr.free_symbols(huge) and math_eval.is_huge(huge) and _evaluates_somewhere(other, names):
            return False
    return _sympy("equal", g, p, ctx)


MIN_ROUNDED_DIGITS = 4  # significant digits that make a decimal "clearly a rounding" (0.3333, not 0.3)
_DECIMAL = re.compile(r"[-+]?(\d*)\.(\d+)")


def rounded_equal(g: Answer, p: Answer) -> bool:
    """A decimal with at least MIN_ROUNDED_DIGITS significant digits equals a value it is the rounding of, to
    the places it shows: `0.3333` == 1/3 and `2.6667` == 8/3, but `0.3` != 1/3, `3.14` != pi, `0.3334` != 1/3.
    (The relative tolerance of expr_equal covers long decimals; this covers short, correctly rounded ones.)"""
    for dec, exact in ((p, g), (g, p)):
        m = _DECIMAL.fullmatch(dec.text.replace(" ", ""))
        if m is None or len((m.group(1) + m.group(2)).lstrip("0")) < MIN_ROUNDED_DIGITS:
            continue
        places = len(m.group(2))
        other = _DECIMAL.fullmatch(exact.text.replace(" ", ""))
        if other is not None and len(other.group(2)) <= places:  # 0.1235 is no rounding of 0.124
            continue
        try:
            value = math_eval.evaluate(exact.value)
            shown = Fraction(m.group())
            half = Fraction(1, 2 * 10**places)
            if isinstance(value, Fraction):
                if abs(value - shown) <= half:
                    return True
                continue
            z = math_eval.as_complex(value)
        except _NUMERIC_ERRORS:
            continue
        if abs(z.imag) <= ABS_TOL * max(1.0, abs(z.real)) and abs(z.real - float(shown)) <= float(half) * (1 + 1e-9):
            return True
    return False


def _evaluates_somewhere(node: tuple, names: list[str]) -> bool:
    """The expression has a finite value at some probe point (so it is not a provably huge constant)."""
    for env in _probe_envs(names):
        try:
            math_eval.as_complex(math_eval.evaluate(node, env))
            return True
        except _NUMERIC_ERRORS:
            continue
    return False


def _sympy(op: str, a: tuple, b: tuple, ctx: Context) -> bool:
    try:
        code_a, code_b = to_sympy(a), to_sympy(b)
    except (math_expr.ExprError, RecursionError):
        return False
    return sympy_check(op, code_a, code_b, ctx.remaining()) is True


def _proportional(d1: tuple, d2: tuple, ctx: Context) -> bool:
    """Equations d1 = 0 and d2 = 0 are the same when d1 / d2 is a nonzero constant."""
    names = sorted(math_expr.free_symbols(d1) | math_expr.free_symbols(d2))
    ratios = []
    for env in _probe_envs(names):
        try:
            a = math_eval.as_complex(math_eval.evaluate(d1, env))
            b = math_eval.as_complex(math_eval.evaluate(d2, env))
        except _NUMERIC_ERRORS:
            continue
        if abs(a) <= ABS_TOL and abs(b) <= ABS_TOL:
            continue
        if abs(b) <= ABS_TOL or abs(a) <= ABS_TOL:
            return False
        ratios.append(a / b)
    if len(ratios) >= 4:
        first = ratios[0]
        return max(abs(r - first) for r in ratios) <= ctx.rel_tol * abs(first)
    return _sympy("proportional", d1, d2, ctx)


# ---------------------------------------------------------------- structures


def _named(node: Answer) -> bool:
    text = node.text.replace(" ", "")
    return bool(text) and (VARIABLE.fullmatch(text) is not None or is_name(text))


def _solved_side(eq: Answer) -> Answer | None:
    """`x = 3` -> 3, `f(x) = 2x` -> 2x, `3 = x` -> 3, `(p,q) = (3,2)` -> (3,2), `AB = 4` -> 4,
    `V_1:V_2 = 11:21` -> 11:21; None when neither side is a name (`7 = 11a+c`, `2x+z = 1`)."""
    lhs, rhs = eq.items
    if _named(lhs):
        return rhs
    if _named(rhs):
        return lhs
    return None


def _letter(node: Answer) -> str | None:
    if node.kind == "choice":
        return node.value
    m = re.match(r"\(?\s*([A-Ja-j])\s*(?:\)|[.:](?:\s|$)|$|\s)", node.text.strip())
    if m and (node.kind != "expr" or len(node.text.strip()) == 1):
        return m.group(1).upper()
    return None


def _ordered(gs: list[Answer], ps: list[Answer], ctx: Context) -> bool:
    return len(gs) == len(ps) and all(answers_equal(g, p, ctx) for g, p in zip(gs, ps))


def _unordered(gs: list[Answer], ps: list[Answer], ctx: Context, as_set: bool) -> bool:
    """Matching without order; as a set (repeats ignored) for sets and for lists of tuples (the same solution
    listed twice is one solution), as a multiset for lists of values (`1, 2` != `1, 2, 2`)."""
    if as_set or (gs and ps and all(x.kind == "seq" for x in gs + ps)):
        return all(any(answers_equal(g, p, ctx) for p in ps) for g in gs) and all(
            any(answers_equal(g, p, ctx) for g in gs) for p in ps
        )
    if len(gs) != len(ps):
        return False
    used = [False] * len(ps)
    for g in gs:
        for j, p in enumerate(ps):
            if not used[j] and answers_equal(g, p, ctx):
                used[j] = True
                break
        else:
            return False
    return True


def _vector(node: Answer) -> list[Answer] | None:
    """A one-row or one-column matrix as a flat list of entries."""
    rows = node.items
    if len(rows) == 1:
        return rows[0]
    if all(len(r) == 1 for r in rows):
        return [r[0] for r in rows]
    return None


def _based_value(node: Answer) -> int | None:
    digits, base = node.value
    try:
        return int(digits, base) if 2 <= base <= 36 else None
    except ValueError:
        return None


def _based_equal(g: Answer, p: Answer) -> bool:
    """52_8 == 52_{8}. A gold 52_8 accepts a bare 52 (the question named the base) but not 42; a plain gold 42
    accepts 52_8 (the same number, written in base 8). Two based numbers are equal when their values are."""
    if g.kind == "based" and p.kind == "based":
        return g.value == p.value or (_based_value(g) is not None and _based_value(g) == _based_value(p))
    if g.kind == "based":
        return g.value[0] == p.text.replace(" ", "").lower()
    value = _based_value(p)
    if value is None or g.kind != "expr":
        return False
    try:
        return values_close(math_eval.evaluate(g.value), Fraction(value))
    except _NUMERIC_ERRORS:
        return False


def answers_equal(g: Answer, p: Answer, ctx: Context) -> bool:
    """Structural equality; the gold's shape decides (see math_normalize for the kinds)."""
    if ctx.remaining() <= 0:
        return False
    if g.text and g.text.replace(" ", "") == p.text.replace(" ", ""):
        return True
    kg, kp = g.kind, p.kind
    if kg == "choice" or kp == "choice":
        return _letter(g) is not None and _letter(g) == _letter(p)
    if kg == "eq" and kp == "eq":
        (l1, r1), (l2, r2) = g.items, p.items
        if _named(l1) and l1.text.replace(" ", "") == l2.text.replace(" ", ""):
            return answers_equal(r1, r2, ctx)
        if all(x.kind == "expr" for x in (l1, r1, l2, r2)):
            return _proportional(("sub", l1.value, r1.value), ("sub", l2.value, r2.value), ctx)
        return False
    if kg == "eq" or kp == "eq":
        side = _solved_side(g if kg == "eq" else p)
        if side is None:
            return False
        return answers_equal(side, p, ctx) if kg == "eq" else answers_equal(g, side, ctx)
    if kg == "based" or kp == "based":
        return _based_equal(g, p)
    if kg == kp == "expr":
        return expr_equal(g.value, p.value, ctx) or rounded_equal(g, p)
    if kg == kp == "seq":
        return g.open == p.open and g.close == p.close and _ordered(g.items, p.items, ctx)
    if {kg, kp} == {"seq", "matrix"}:
        seq, mat = (g, p) if kg == "seq" else (p, g)
        vec = _vector(mat)
        return vec is not None and seq.open + seq.close in ("()", "[]") and _ordered(seq.items, vec, ctx)
    if {kg, kp} == {"seq", "list"}:
        seq = g if kg == "seq" else p
        return seq.open + seq.close == "()" and _ordered(g.items, p.items, ctx)
    if kg in ("set", "list", "union") and kp in ("set", "list", "union"):
        return _unordered(g.items, p.items, ctx, as_set="list" not in (kg, kp) or "set" in (kg, kp))
    if kg == kp == "matrix":
        return len(g.items) == len(p.items) and all(_ordered(a, b, ctx) for a, b in zip(g.items, p.items))
    if kg == kp == "text":  # prose answers ("\\text{Evelyn}" == "evelyn"); prose never equals an expression
        return bool(text_key(g.text)) and text_key(g.text) == text_key(p.text)
    return False


def top_equal(g: Answer, p: Answer, ctx: Context) -> bool:
    """answers_equal plus the top-level percent and degree readings:

    "50%" equals both "50" (the question asked for a percentage) and "0.5" (what 50% means); an angle
    "30^\\circ" equals "30" and "\\frac{\\pi}{6}". Without a % or degree sign on either side no such scaling
    is tried."""
    if answers_equal(g, p, ctx):
        return True
    for comma, other in ((g, p), (p, g)):  # `1,22` against one number is the decimal 1.22
        decimal = decimal_comma(comma.text) if comma.kind == "list" and other.kind == "expr" else None
        if decimal is not None:
            return answers_equal(parse_answer(decimal), other, ctx)
    if g.kind != "expr" or p.kind != "expr":
        return False
    scales = []
    if g.percent != p.percent:
        scales.append(("div", ("num", Fraction(100))))
    if g.degree != p.degree:
        scales.append(("mul", ("div", ("const", "pi"), ("num", Fraction(180)))))
    for op, factor in scales:
        flagged_is_gold = g.percent if op == "div" else g.degree
        gv, pv = g.value, p.value
        if flagged_is_gold:
            gv = (op, gv, factor)
        else:
            pv = (op, pv, factor)
        if expr_equal(gv, pv, ctx):
            return True
    return False
