"""Answers whose shape is computed, not read off: inequalities as intervals, sums and products of matrices.

`x > 3` is the interval (3, \\infty), `-2 \\le x \\le 7` is [-2, 7], `0 < f(x) < 1` is (0, 1), `|x| < 3` is (-3, 3)
and `1 \\le |z| \\le 2` is [-2, -1] \\cup [1, 2], so each equals the interval written out. A sum or product of
explicit matrices (`\\begin{pmatrix}1&2\\end{pmatrix} + \\begin{pmatrix}3&4\\end{pmatrix}`) is the matrix it
evaluates to (entries as expression trees, compared like any others). An interval's endpoints are parsed by
math_normalize's structure function, passed in as `structure(text, depth)` (math_normalize imports this module).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

from reward_models import math_eval, math_expr
from reward_models.math_answer import Answer

Structure = Callable[[str, int], Answer]
_INEQ = re.compile(r"\\le |\\ge |<|>|\\le$|\\ge$")


def _solve_linear(lhs: str, rhs: str) -> tuple[Fraction, Fraction] | None:
    """lhs - rhs = a*x + b with rational a != 0 in one variable x -> (root -b/a, slope a); else None."""
    try:
        diff = ("sub", math_expr.parse(lhs), math_expr.parse(rhs))
        names = math_expr.free_symbols(diff)
        if len(names) != 1:
            return None
        (name,) = names
        values = [math_eval.evaluate(diff, {name: Fraction(x)}) for x in (0, 1, 2, -3)]
    except (math_expr.ExprError, ArithmeticError, ValueError, TypeError):
        return None
    if not all(isinstance(v, Fraction) for v in values):
        return None
    b, a = values[0], values[1] - values[0]
    if a == 0 or values[2] != 2 * a + b or values[3] != -3 * a + b:
        return None
    return -b / a, a


_INEQ_VARIABLE = re.compile(r"[a-zA-Z](?:_\{?\w+\}?)?(?:\([a-zA-Z]\))?")  # x, x_1, f(x)
_ABS_VARIABLE = re.compile(r"\|\s*[a-zA-Z](?:_\{?\w+\}?)?\s*\|")


def _constant(text: str) -> Fraction | float | None:
    """The real value of a constant bound (`\\frac{3}{2}`, `\\sqrt 2`), else None."""
    try:
        z = math_eval.evaluate(math_expr.parse(text))
    except (math_expr.ExprError, ArithmeticError, ValueError, TypeError):
        return None
    if isinstance(z, Fraction):
        return z
    z = complex(z)
    return z.real if abs(z.imag) <= 1e-12 else None


def _absolute_inequality(terms: list[str], ops: list[str], up: dict, depth: int, structure: Structure) -> Answer | None:
    """`|x| < 3` -> (-3, 3), `|x| \\ge 2` -> (-\\infty, -2] \\cup [2, \\infty),
    `1 \\le |z| \\le 2` -> [-2, -1] \\cup [1, 2]; None for other shapes (`|x| > -1`: every x)."""
    where = [i for i, t in enumerate(terms) if _ABS_VARIABLE.fullmatch(t)]
    if len(where) != 1:
        return None
    lo = hi = None  # (bound text, closed)
    if len(terms) == 2:
        increasing, closed = up[ops[0]]
        if where[0] == 1:
            increasing = not increasing
        bound = terms[1 - where[0]]
        lo, hi = (None, (bound, closed)) if increasing else ((bound, closed), None)
    elif len(terms) == 3 and where[0] == 1:
        (inc1, closed1), (inc2, closed2) = up[ops[0]], up[ops[1]]
        if inc1 != inc2:
            return None
        lo, hi = ((terms[0], closed1), (terms[2], closed2)) if inc1 else ((terms[2], closed2), (terms[0], closed1))
    else:
        return None
    values = [_constant(b[0]) if b else 0 for b in (lo, hi)]
    if any(v is None for v in values) or (hi is not None and values[1] <= 0):
        return None

    def seq(a: str, b: str, opened: str, closed: str) -> Answer:
        items = [structure(a, depth + 1), structure(b, depth + 1)]
        return Answer("seq", items=items, open=opened, close=closed, text=f"{opened}{a}, {b}{closed}")

    if lo is None or values[0] < 0 or (values[0] == 0 and lo[1]):  # |x| < b: one interval around 0
        if hi is None:
            return None
        h, c = hi
        return seq(f"-({h})", h, "[" if c else "(", "]" if c else ")")
    low, c_lo = lo
    if hi is None:
        right = seq(low, "\\infty", "[" if c_lo else "(", ")")
        left = seq("-\\infty", f"-({low})", "(", "]" if c_lo else ")")
    else:
        high, c_hi = hi
        right = seq(low, high, "[" if c_lo else "(", "]" if c_hi else ")")
        left = seq(f"-({high})", f"-({low})", "[" if c_hi else "(", "]" if c_lo else ")")
    return Answer("union", items=[left, right], text=" \\cup ".join((left.text, right.text)))


def inequality(s: str, depth: int, structure: Structure) -> Answer | None:
    """`x > 3` -> (3, \\infty), `-1 \\le x < 2` -> [-1, 2): inequalities in one variable become intervals."""
    if not _INEQ.search(s):
        return None
    pieces = re.split(r"(\\le |\\ge |<|>)", s + " ")
    terms, ops = [p.strip() for p in pieces[0::2]], [p.strip() for p in pieces[1::2]]
    if any(not t for t in terms):
        return None
    is_var = [_INEQ_VARIABLE.fullmatch(t) is not None for t in terms]
    up = {"<": (True, False), "\\le": (True, True), ">": (False, False), "\\ge": (False, True)}
    absolute = _absolute_inequality(terms, ops, up, depth, structure)
    if absolute is not None:
        return absolute
    if len(terms) == 2:
        increasing, closed = up[ops[0]]
        if is_var[0] != is_var[1]:
            if is_var[1]:  # 3 < x  is  x > 3
                increasing = not increasing
            bound = terms[1] if is_var[0] else terms[0]
        else:
            solved = _solve_linear(terms[0], terms[1])
            if solved is None:
                return None
            root, slope = solved
            bound = (
                str(root.numerator) if root.denominator == 1 else f"\\frac{{{root.numerator}}}{{{root.denominator}}}"
            )
            if slope < 0:  # -x > -1  is  x < 1
                increasing = not increasing
        lo, hi = ("-\\infty", bound) if increasing else (bound, "\\infty")
        open_, close = ("(", "]" if closed else ")") if increasing else ("[" if closed else "(", ")")
    elif len(terms) == 3 and is_var[1] and not is_var[0] and not is_var[2]:
        (inc1, closed1), (inc2, closed2) = up[ops[0]], up[ops[1]]
        if inc1 != inc2:
            return None
        lo, hi = (terms[0], terms[2]) if inc1 else (terms[2], terms[0])
        c_lo, c_hi = (closed1, closed2) if inc1 else (closed2, closed1)
        open_, close = "[" if c_lo else "(", "]" if c_hi else ")"
    else:
        return None
    items = [structure(lo, depth + 1), structure(hi, depth + 1)]
    return Answer("seq", items=items, open=open_, close=close, text=s)


# ---------------------------------------------------------------- matrix arithmetic

_MATRIX_BLOCK = re.compile(r"\\begin\{([pbBvV]?matrix)\}(.*?)\\end\{\1\}", re.S)
_MATRIX_GAP = re.compile(r"\s*(\+|-|\\cdot|\\times)?\s*")
MAX_MATRICES = 8
MAX_PRODUCTS = 3  # entries of a product chain grow with its length; sums do not
MAX_CELLS = 64


def _cells(body: str) -> list[list[tuple]] | None:
    rows = [r for r in re.split(r"\\\\", body) if r.strip()]
    try:
        grid = [[math_expr.parse(c.strip()) for c in r.split("&")] for r in rows]
    except math_expr.ExprError:
        return None
    if not grid or any(len(r) != len(grid[0]) for r in grid) or len(grid) * len(grid[0]) > MAX_CELLS:
        return None
    return grid


def _matmul(a: list[list[tuple]], b: list[list[tuple]]) -> list[list[tuple]] | None:
    if len(a[0]) != len(b):
        return None
    out = []
    for row in a:
        out_row = []
        for j in range(len(b[0])):
            total = ("mul", row[0], b[0][j])
            for k in range(1, len(b)):
                total = ("add", total, ("mul", row[k], b[k][j]))
            out_row.append(total)
        out.append(out_row)
    return out


def matrix_expression(s: str) -> Answer | None:
    """A sum, difference or product of two or more explicit matrices -> the matrix it equals (entries as
    unevaluated expression trees); None when `s` is not such an expression or the shapes do not fit."""
    blocks = list(_MATRIX_BLOCK.finditer(s))
    if not 2 <= len(blocks) <= MAX_MATRICES or s[: blocks[0].start()].strip() or s[blocks[-1].end() :].strip():
        return None
    ops = []
    for a, b in zip(blocks, blocks[1:]):
        gap = _MATRIX_GAP.fullmatch(s, a.end(), b.start())
        if gap is None:
            return None
        ops.append(gap.group(1) or "*")
    if sum(op not in ("+", "-") for op in ops) > MAX_PRODUCTS:
        return None
    grids = [_cells(b.group(2)) for b in blocks]
    if any(g is None for g in grids):
        return None
    terms = [(1, grids[0])]  # products bind tighter than sums
    for op, grid in zip(ops, grids[1:]):
        if op in ("+", "-"):
            terms.append((1 if op == "+" else -1, grid))
            continue
        product = _matmul(terms[-1][1], grid)
        if product is None:
            return None
        terms[-1] = (terms[-1][0], product)
    shape = (len(terms[0][1]), len(terms[0][1][0]))
    if any((len(g), len(g[0])) != shape for _, g in terms):
        return None
    result = [[cell if terms[0][0] > 0 else ("neg", cell) for cell in row] for row in terms[0][1]]
    for sign, grid in terms[1:]:
        result = [[("add" if sign > 0 else "sub", x, y) for x, y in zip(r1, r2)] for r1, r2 in zip(result, grid)]
    return Answer("matrix", items=[[Answer("expr", value=cell) for cell in row] for row in result])
