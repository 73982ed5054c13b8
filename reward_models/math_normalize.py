"""Answer text -> a comparable structure: LaTeX clean-up, units, and the shape of the answer.

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

UNITS = set(
    (
        "cm mm km m meter meters metre metres centimeter centimeters millimeter millimeters kilometer "
        "kilometers in inch inches ft foot feet yd yard yards mile miles mi g gram grams kg kilogram "
        "kilograms mg lb lbs pound pounds oz ounce ounces l liter liters litre litres ml gallon gallons gal "
        "s sec secs second seconds min mins minute minutes h hr hrs hour hours day days week weeks month "
        "months year years yr yrs dollar dollars cent cents usd euro euros unit units sq square cubic degree "
        "degrees deg mph kmh percent rad radian radians p.m a.m am pm"
    ).split()
)
ATTACHED_UNITS = {u for u in UNITS if len(u) >= 2 and u not in ("in", "am", "pm", "mi", "sq", "deg", "rad", "min")}
MATH_WORDS = math_expr.FUNCTIONS | {"pi", "infty", "inf", "and", "or", "mod", "cup", "cap", "in", "le", "ge"}
TEXT_COMMANDS = tuple(
    (
        "text textbf textit textrm textnormal texttt textsf mbox mathrm mathbf mathit mathsf boldsymbol bm "
        "operatorname emph hbox"
    ).split()
)
MAX_ITEMS = 64  # collections larger than this are compared as text

_UNICODE = {
    "\u2212": "-",
    "\u2013": "-",
    "\u2014": "-",
    "\u00d7": r"\times ",
    "\u22c5": r"\cdot ",
    "\u00b7": r"\cdot ",
    "\u00f7": r"\div ",
    "\u03c0": r"\pi ",
    "\u221a": r"\sqrt",
    "\u221e": r"\infty ",
    "\u2264": r"\le ",
    "\u2265": r"\ge ",
    "\u2260": r"\ne ",
    "\u222a": r"\cup ",
    "\u2205": r"\emptyset ",
    "\u00b0": r"^\circ ",
    "\u2032": "'",
    "\u00a0": " ",
    "\u2009": " ",
    "\u202f": " ",
    "\u20ac": "",
    "\u00a3": "",
    "\u00a5": "",
}


# ---------------------------------------------------------------- brace helpers


def match_brace(s: str, start: int) -> int:
    """Index of the `}` closing the `{` at s[start], or -1. Backslash-escaped braces are skipped."""
    depth = 0
    i = start
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def replace_command(s: str, names: tuple[str, ...], fn) -> str:
    """Replace every `\\name{arg}` (name in names) by fn(name, arg, whole_string_is_this_command)."""
    pattern = re.compile(r"\\(" + "|".join(names) + r")(?![a-zA-Z])\s*\{")
    out, pos = [], 0
    while True:
        m = pattern.search(s, pos)
        if m is None:
            break
        end = match_brace(s, m.end() - 1)
        if end < 0:
            break
        whole = not s[: m.start()].strip() and not s[end + 1 :].strip()
        out.append(s[pos : m.start()])
        out.append(fn(m.group(1), s[m.end() : end], whole))
        pos = end + 1
    out.append(s[pos:])
    return "".join(out)


def brace_arguments(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`, `\\frac\\pi4` -> `\\frac{\\pi}{4}`."""
    out, i = [], 0
    pattern = re.compile(r"\\(d|t|c)?(frac|binom|sqrt)(?![a-zA-Z])")
    while True:
        m = pattern.search(s, i)
        if m is None:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i : m.start()] + "\\" + m.group(2))
        j = m.end()
        if m.group(2) == "sqrt":
            while j < len(s) and s[j] == " ":
                j += 1
            if j < len(s) and s[j] == "[":
                close = s.find("]", j)
                if close < 0:
                    out.append(s[j:])
                    return "".join(out)
                out.append(s[j : close + 1])
                j = close + 1
        for _ in range(1 if m.group(2) == "sqrt" else 2):
            while j < len(s) and s[j] == " ":
                j += 1
            if j >= len(s):
                break
            if s[j] == "{":
                end = match_brace(s, j)
                if end < 0:
                    break
                out.append(s[j : end + 1])
                j = end + 1
            elif s[j] == "\\":
                cmd = re.match(r"\\[a-zA-Z]+|\\.", s[j:]).group()
                out.append("{" + cmd + "}")
                j += len(cmd)
            else:
                out.append("{" + s[j] + "}")
                j += 1
        i = j


# ---------------------------------------------------------------- cleaning


def _text_command(name: str, arg: str, whole: bool) -> str:
    if name == "operatorname":
        return "\\" + arg.strip() + " " if arg.strip() in math_expr.FUNCTIONS else " " + arg + " "
    stripped = arg.strip().lower()
    if stripped in ("and", "or", ",", "and,"):
        return ", "
    if whole or name in ("mathbf", "mathit", "boldsymbol", "bm", "mathsf"):
        return arg
    if len(stripped) == 1:  # 5\text{ m} is a unit; a plain "5 m" may be algebra and is left alone
        return " " if stripped in UNITS else arg
    return " " + arg + " "


def _repeating_decimal(m: re.Match) -> str:
    whole, fixed, repeat = m.group(1) or "0", m.group(2), m.group(3)
    num = int(whole + fixed + repeat) - int(whole + fixed)
    den = int("9" * len(repeat) + "0" * len(fixed))
    return f"\\frac{{{num}}}{{{den}}}"


# `\\frac` written with a JSON-escaped backslash (not a `\\\\` row break followed by a command)
_DOUBLE_ESCAPE = re.compile(
    r"(?<!\\)\\\\(?=(?:d|t)?frac|sqrt|pi|cdot|times|text|left|right|boxed"
    r"|(?:leq?|geq?|lt|gt|neq?|infty|cup|pm|in)(?![a-zA-Z]))"
)
# `\frac` written in a non-raw string literal: "\f" became a form feed, "\t" a tab, "\b" a backspace
_CONTROL = {"\x07": "a", "\x08": "b", "\x0b": "v", "\x0c": "f", "\t": "t", "\r": "r"}
_CONTROL_ESCAPE = re.compile(
    r"[\x07\x08\x0b\x0c](?=[a-z])"
    r"|\t(?=ext|imes|heta|frac|riangle|an(?![a-z])|au(?![a-z]))"
    r"|\r(?=ight|ho(?![a-z])|angle)"
)
# thousands separators MATH writes as 10,\!000, 1{,}000 and 14{, }916
_LATEX_THOUSANDS = re.compile(r"(\d)\s*(?:,\s*\\!|\{\s*,\s*\})\s*(?=\d{3}(?!\d))")


def repair_escapes(text: str) -> str:
    """Undo backslash escapes a string literal swallowed: a form feed + `rac` is `\\frac`, a tab + `ext` is
    `\\text` (only before the names of LaTeX commands, so real tabs and line breaks stay)."""
    return _CONTROL_ESCAPE.sub(lambda m: "\\" + _CONTROL[m.group()], text)


_LARGE = re.compile(r"(\d)\s*(million|billion|trillion)\b")
_LARGE_POWERS = {"million": "6", "billion": "9", "trillion": "12"}
_SPACING = re.compile(r"\\\\|\\[,!]|\\[;: ]|\\q?quad|~")  # `\\quadx_2`: a squeezed-out space


def _spacing(m: re.Match) -> str:
    """`\\,` and `\\!` vanish (1\\,000 is 1000), other spaces become a space; a `\\\\` row break is kept."""
    if m.group() == "\\\\":
        return m.group()
    return "" if m.group() in ("\\,", "\\!") else " "


def clean(text: str) -> tuple[str, bool, bool]:
    """LaTeX and prose clean-up -> (text, had_percent, had_degree). Never raises on str input."""
    s = repair_escapes(text).strip()
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    s = _DOUBLE_ESCAPE.sub(r"\\", s)
    s = replace_command(s, ("boxed", "fbox"), lambda n, a, w: a)
    s = re.sub(r"\\(?:begin|end)\{(?:align\*?|equation\*?|displaymath)\}", " ", s)
    s = _LATEX_THOUSANDS.sub(r"\1", s)
    s = s.replace("\\$", " ").replace("$", " ")
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![a-zA-Z])\s*\.?", "", s)
    s = re.sub(r"\\(?:displaystyle|textstyle|scriptstyle|limits|nolimits)(?![a-zA-Z])", " ", s)
    s = re.sub(r"\\hspace\*?\{[^{}]*\}", " ", s)
    s = _SPACING.sub(_spacing, s)
    s = re.sub(r"\\[()\[\]]", " ", s)  # \( \) \[ \] math delimiters (after \left( became "(")
    s = re.sub(r"\\mathbb\s*\{?\s*R\s*\}?", r"(-\\infty,\\infty)", s)
    percent = bool(re.search(r"\\?%|\\percent", s))
    s = re.sub(r"\\?%|\\percent(?![a-zA-Z])", " ", s)
    degree = bool(re.search(r"\\circ|\\degree", s))
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])", " ", s)
    s = replace_command(s, TEXT_COMMANDS, _text_command)
    s = re.sub(r"\\(?:dfrac|tfrac|cfrac)(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"\\(?:dbinom|tbinom)(?![a-zA-Z])", r"\\binom", s)
    s = re.sub(r"\\(?:leqslant|leq|le)(?![a-zA-Z])", r"\\le ", s)
    s = re.sub(r"\\(?:geqslant|geq|ge)(?![a-zA-Z])", r"\\ge ", s)
    s = re.sub(r"\\lt(?![a-zA-Z])", "<", s)
    s = re.sub(r"\\gt(?![a-zA-Z])", ">", s)
    s = re.sub(r"\\(?:neq|ne)(?![a-zA-Z])|!=", r"\\ne ", s)
    s = s.replace(">=", "\\ge ").replace("<=", "\\le ")
    s = _LARGE.sub(lambda m: m.group(1) + r"\times10^{" + _LARGE_POWERS[m.group(2)] + "}", s)
    s = re.sub(r"\\(?:varnothing)(?![a-zA-Z])", r"\\emptyset", s)
    s = re.sub(r"\\(?:langle)(?![a-zA-Z])", r"\\langle ", s)
    s = brace_arguments(s)
    s = re.sub(r"(\d*)\.(\d*)\\overline\s*\{(\d+)\}", _repeating_decimal, s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s)  # x \in [-2, 7]
    s = re.sub(r"(?<=\S)\s+(?:and|or)\s+(?=\S)|(?<=[)\]}])\s*(?:and|or)\s*(?=[(\[]|\\\{)", ", ", s)
    s = _strip_punctuation(s)
    s, unit_percent, unit_degree = _strip_units(s)
    s = _strip_punctuation(s)
    if s.startswith("="):
        s = s[1:].strip()
    if re.fullmatch(r"-?\d+ \d+/\d+", s):  # 7 3/4 is a mixed number
        whole, frac = s.split(" ")
        s = f"-({whole[1:]}+{frac})" if whole.startswith("-") else f"({whole}+{frac})"
    if re.fullmatch(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?", s):  # 1 000 000
        s = s.replace(" ", "")
    return s, percent or unit_percent, degree or unit_degree


def _strip_punctuation(s: str) -> str:
    """One trailing sentence `.`, `,` or `;` (an ellipsis `...` stays, so `1, 2, 3, ...` is not `1, 2, 3`)."""
    s = s.strip()
    if not s.endswith("..") and s[-1:] in (".", ",", ";"):
        s = s[:-1].strip()
    return s


_TAIL_WORD = re.compile(r"(\s*)(?<![\\A-Za-z])([A-Za-z]+(?:\.[A-Za-z]+)?)\.?\s*(?:\^\s*\{?[23]\}?)?\s*$")
_HEAD_WORD = re.compile(r"^(?:usd|rs\.?|inr|eur)\s*", re.I)


def _strip_units(s: str) -> tuple[str, bool, bool]:
    """`5 cm` -> `5`, `10 square units` -> `10`, `12 apples` -> `12`: a trailing word after math is a unit.

    A word glued to the number (`5cm`) is only a unit when it is a known multi-letter unit, so `2x` stays."""
    percent = degree = False
    s = _HEAD_WORD.sub("", s)
    for _ in range(8):
        m = _TAIL_WORD.search(s)
        if m is None or m.start() == 0:
            break
        head = s[: m.start()].rstrip()
        word = m.group(2).lower()
        if not head or not re.search(r"[\d}).a-zA-Z]$", head) or head.endswith("\\"):
            break
        spaced = bool(m.group(1))
        known = word in UNITS and len(word) >= 2
        if not ((known or (len(word) >= 3 and word not in MATH_WORDS)) if spaced else word in ATTACHED_UNITS):
            break
        percent |= word == "percent"
        degree |= word in ("degree", "degrees", "deg")
        s = head
    return s, percent, degree


def text_key(text: str) -> str:
    """A loose key for prose answers: lower case, no LaTeX text wrappers, no spaces or trailing dot."""
    s = text.lower()
    s = re.sub(r"\\(?:" + "|".join(TEXT_COMMANDS) + r")\s*", "", s)
    s = re.sub(r"[\s{}$]|\\[,!;: ]", "", s)
    return s.strip(".")


# ---------------------------------------------------------------- structure


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


_VARIABLE = re.compile(r"[a-zA-Z](?:_\{?\w+\}?)?(?:\([a-zA-Z, ]*\))?|\\[a-zA-Z]+")
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
        s = s.replace("\\approx", "=") if _VARIABLE.fullmatch(head) else head
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
