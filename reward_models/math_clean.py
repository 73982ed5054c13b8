"""Answer text cleaned before its shape is read (`reward_models.math_normalize`): LaTeX brace helpers, unicode and
escapes repaired, spacing and text commands removed, units and the percent / degree signs stripped (and reported),
and the loose key prose answers are compared by (`text_key`).
"""

from __future__ import annotations

import re

from reward_models import math_expr

__all__ = [
    "ATTACHED_UNITS",
    "MATH_WORDS",
    "TEXT_COMMANDS",
    "UNITS",
    "brace_arguments",
    "clean",
    "match_brace",
    "repair_escapes",
    "replace_command",
    "text_key",
]

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
