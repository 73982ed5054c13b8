"""Answer text -> a comparable structure: the shape of the answer, read from text cleaned by `math_clean`.

Why a structure and not one big sympy expression: the shape decides what "equal" means. A tuple `(1,2)` is
ordered, a set `\\{1,2\\}` and a list of solutions `1, 2` are not, an interval's brackets matter, an equation
`y = 2x+1` may be compared with its right-hand side, a multiple-choice letter is compared as a letter.

`parse_answer(text)` returns an `Answer` whose kind is one of
    expr   (value: expression tree from math_expr)   text   (value: lower-cased prose key)
    choice (value: letter A-J)                       based  (value: (digits, base), like 52_8)
    eq     (items: [lhs, rhs])                       seq    (items; open, close brackets: tuples, intervals)
    set    (items, unordered, duplicates ignored)    list   (items, unordered: "1, 2" or 1 \\pm 2)
    union  (items: intervals joined by \\cup)         matrix (rows: list of lists of Answer)
and carries the flags `percent` (a % sign was removed) and `degree` (a degree sign or the word was removed).
Inside brackets `;` separates entries like `,` (`\\{1;2;3\\}`, `(0;-2;6)`); at the top level it separates
groups, each kept whole (`p=5,q=2;p=7,q=2` is a list of two solutions). Inequalities become intervals and
matrix sums / products are evaluated in math_shapes.
"""

from __future__ import annotations

import re

from reward_models import math_expr, math_shapes
from reward_models.math_answer import Answer
from reward_models.math_clean import clean, match_brace, repair_escapes, text_key

# repair_escapes and text_key are imported from here too (reward_models.math)
__all__ = [
    "MAX_ITEMS",
    "VARIABLE",
    "decimal_comma",
    "is_name",
    "parse_answer",
    "repair_escapes",
    "split_top",
    "text_key",
]

MAX_ITEMS = 64  # collections larger than this are compared as text


def split_top(s: str, sep: str) -> list[str]:
    """Split on sep outside (), [], {} (interval brackets may be mixed: `(1,2]`)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and not s.startswith(sep, i):
            if s.startswith("\\{", i) or s.startswith("\\}", i):
                depth += 1 if s[i + 1] == "{" else -1
            i += 2 if i + 1 < len(s) and not s[i + 1].isalpha() else 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif (
            depth == 0
            and s.startswith(sep, i)
            and (not sep[-1].isalpha() or not s[i + len(sep) : i + len(sep) + 1].isalpha())
        ):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _enclosed(s: str) -> bool:
    """True when the bracket at s[0] is closed by the bracket at s[-1] (not `(1)(2)`)."""
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0 and i != len(s) - 1:
                return False
    return depth == 0


VARIABLE = re.compile(r"[a-zA-Z](?:_\{?\w+\}?)?(?:\([a-zA-Z, ]*\))?|\\[a-zA-Z]+")
_CHOICE = re.compile(r"\(?\s*([A-J])\s*\)?|\(\s*([a-j])\s*\)")
_BASED = re.compile(r"([0-9A-Za-z]+)_\{?(\d+)\}?")
_MATRIX = re.compile(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.S)
_THOUSANDS = re.compile(r"[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")  # 0,111 is a decimal comma, not 111


def parse_answer(text: str) -> Answer:
    """Cleaned structure of an answer string (never raises on str input; unknown shapes become `text`)."""
    s, percent, degree = clean(text)
    node = _structure(s, 0)
    node.percent, node.degree = percent, degree
    return node


def _structure(s: str, depth: int) -> Answer:
    s = s.strip()
    if depth > 6 or not s:
        return Answer("text", text_key(s), text=s)
    if s in ("\\emptyset", "\\{\\}", "\\{ \\}", "{}"):
        return Answer("set", items=[], text=s)
    if _THOUSANDS.fullmatch(s):
        return _expr(s.replace(",", ""))
    if s[0] == "{" and s[-1] == "}" and match_brace(s, 0) == len(s) - 1:  # {1,3} is LaTeX grouping, not a set
        return _structure(s[1:-1], depth + 1)
    if "\\approx" in s:  # x \approx 11 -> x = 11;  1/3 \approx 0.33 -> 1/3 (the exact value is the answer)
        head = s.split("\\approx")[0].strip()
        s = s.replace("\\approx", "=") if VARIABLE.fullmatch(head) else head
        if not s:
            return Answer("text", "", text=s)
    parts = split_top(s, "\\cup")
    if len(parts) > 1:
        return _collection("union", parts, depth, s)
    if s.startswith("\\{") and s.endswith("\\}") and match_brace(s, 1) in (-1, len(s) - 1):
        return _collection("set", _items(s[2:-2]), depth, s)
    if s[0] in "([" and s[-1] in ")]" and _MATRIX.fullmatch(s[1:-1].strip()):  # \left[\begin{array}..\right]
        s = s[1:-1].strip()
    computed = math_shapes.matrix_expression(s) if s.count("\\begin") > 1 else None
    if computed is not None:
        return computed
    m = _MATRIX.fullmatch(s)
    if m:
        rows = [r for r in split_top(m.group(2), "\\\\") if r.strip()]
        cells = [[_structure(c, depth + 1) for c in split_top(r, "&")] for r in rows]
        return Answer("matrix", items=cells, text=s)
    if s.startswith("\\langle") and s.endswith("\\rangle"):
        items = split_top(s[len("\\langle") : -len("\\rangle")], ",")
        return Answer("seq", items=[_structure(x, depth + 1) for x in items], open="(", close=")", text=s)
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _enclosed(s):
        items = _items(s[1:-1])
        if len(items) >= 2:
            if len(items) > MAX_ITEMS:
                return Answer("text", text_key(s), text=s)
            return Answer("seq", items=[_structure(x, depth + 1) for x in items], open=s[0], close=s[-1], text=s)
    groups = split_top(s, ";")
    if len(groups) > 1 and len(groups) <= MAX_ITEMS and all(g.strip() for g in groups):
        # `-12;-11;-10` lists values; in `p=5,q=2;p=7,q=2` each group is one solution (kept whole)
        return Answer("list", items=[_structure(g, depth + 1) for g in groups], text=s)
    parts = split_top(s, ",")
    if len(parts) > 1:
        return _collection("list", parts, depth, s)
    for sign in ("\\pm", "\\mp"):
        if sign in s:
            if s.count("\\pm") + s.count("\\mp") > 1:
                return Answer("text", text_key(s), text=s)
            first, second = ("+", "-") if sign == "\\pm" else ("-", "+")
            return _collection("list", [s.replace(sign, first), s.replace(sign, second)], depth, s)
    interval = math_shapes.inequality(s, depth, _structure)
    if interval is not None:
        return interval
    sides = split_top(s, "=")
    if len(sides) > 1 and all(x.strip() for x in sides):
        # a chain `x = 5+5+1 = 11` states x = 11: the named side (else the first) against the last one
        lhs = next((x for x in sides[:-1] if is_name(x)), sides[0])
        return Answer("eq", items=[_structure(lhs, depth + 1), _structure(sides[-1], depth + 1)], text=s)
    m = _CHOICE.fullmatch(s)
    if m:
        return Answer("choice", (m.group(1) or m.group(2)).upper(), text=s)
    m = _BASED.fullmatch(s)
    if m and not m.group(1).isalpha():
        return Answer("based", (m.group(1).lower(), int(m.group(2))), text=s)
    return _expr(s)


def _items(inner: str) -> list[str]:
    """The entries of a bracketed collection: comma-separated, or `;`-separated when there is no comma."""
    items = split_top(inner, ",")
    return split_top(inner, ";") if len(items) == 1 else items


_NAME_FUNCTIONS = re.compile(r"\\(?:" + "|".join(sorted(math_expr.FUNCTIONS)) + r")(?![a-zA-Z])")
_NAME = re.compile(r"(?:[A-Za-z(),:|'{}\[\]]|\\[a-zA-Z]+)+")


def is_name(text: str) -> bool:
    """Whether an equation side names the answer instead of computing it: `x`, `AB`, `|AB|`, `(p,q)`, `f(x)`,
    `V_1:V_2`, `\\frac{NO}{BO}`, `\\angle ABC`. No digits (outside subscripts), operators or functions, so
    `2x+z`, `a^2+b` and `\\sin x` are expressions."""
    t = re.sub(r"_\{[^{}]*\}|_\w|\s", "", text)
    if not t or not re.search(r"[A-Za-z]", t) or re.search(r"[\d\-+*/^=<>]", t) or _NAME_FUNCTIONS.search(t):
        return False
    return _NAME.fullmatch(t) is not None


_DECIMAL_COMMA = re.compile(r"([-+]?)(\d+),(\d+)")


def decimal_comma(text: str) -> str | None:
    """`1,22` -> `1.22`, `0,111` -> `0.111`, `1000,99` -> `1000.99`: one comma inside a bare number that cannot
    be a thousands separator. None for `1,000` (one thousand), `1, 2` and anything else."""
    m = _DECIMAL_COMMA.fullmatch(text.strip())
    if m is None or (re.fullmatch(r"[1-9]\d{0,2}", m.group(2)) and len(m.group(3)) == 3):
        return None
    return f"{m.group(1)}{m.group(2)}.{m.group(3)}"


def _expr(s: str) -> Answer:
    try:
        return Answer("expr", math_expr.parse(s), text=s)
    except math_expr.ExprError:
        return Answer("text", text_key(s), text=s)


def _collection(kind: str, parts: list[str], depth: int, s: str) -> Answer:
    if len(parts) > MAX_ITEMS or any(not p.strip() for p in parts):
        return Answer("text", text_key(s), text=s)
    items: list[Answer] = []
    for p in parts:
        node = _structure(p, depth + 1)
        items.extend(node.items if node.kind == "list" and kind in ("set", "list") else [node])
    return Answer(kind, items=items, text=s)
