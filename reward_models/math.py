"""The math answer verifier: find the final answer in a completion and decide whether it equals the gold one.

Public names (other code and recipes call these):
    extract_answer(text, mode="lenient") -> str | None   the completion's final answer
    gold_answer(text) -> str                             the dataset's answer (`#### 72`, `\\boxed{}`, raw)
    is_equivalent(gold, pred, timeout=2.0) -> bool       mathematical equality; never raises; bounded time
    verifier_stats() -> dict[str, int], timeout_count() -> int
    math_correctness(prompts, completions, answer, mode="lenient", **_)   reward 1.0 / 0.0
    format_reward(prompts, completions, pattern=FORMAT_PATTERN, **_)      reward 1.0 / 0.0

How equality is decided (details in math_normalize, math_compare, math_expr, math_sympy):
  * LaTeX and prose are cleaned: `\\left( \\right)`, `\\! \\, \\ `, `\\text{}`, `\\dfrac`, `\\frac12`, `$`,
    `\\$`, thousands separators (`1,000`, `10,\\!000`), units and currency words (`5 cm`, `5 dollars`,
    `\\text{ inches}^2`), `^\\circ`, `%`, a leading `x =` or `x \\in`.
  * The answer's shape is kept: tuples and intervals are ordered and their brackets matter
    (`(1,2] != (1,2)`, `(1,2) != (2,1)`); sets `\\{...\\}` and comma lists of solutions are unordered;
    `a \\pm b` is the list {a+b, a-b}; `x > 3` is the interval (3, \\infty); `y = 2x+1` equals `2x+1` and
    `2x - y + 1 = 0`; `(B)` == `B` == `\\text{(B)}`; `52_8` == `52`; one-column matrices equal tuples.
  * Numbers are compared exactly as rationals (`0.5 == 1/2 == \\frac{1}{2} == \\dfrac12`,
    `1e3 == 1\\times10^3`), with a relative tolerance of 1e-6 when either side is irrational or a non-integer
    decimal (`\\sqrt2 == 1.414214`), but exactly when one side is an integer (`1000000 != 1000001`).
  * Percent: "50\\%" equals "50" and also "0.5"; "0.5" vs "50" (no % anywhere) is not equal.
    Degrees: "30^\\circ" equals "30" and "\\frac{\\pi}{6}".
  * Expressions with variables are compared at fixed probe points; sympy, in a killable worker process (so
    the time bound holds off the main thread and on every rank), decides what the numbers cannot.
  * Units are ignored, not converted: "5 cm" == "5 m" == "5".
"""

from __future__ import annotations

import functools
import re
import time
from decimal import Decimal
from fractions import Fraction

from reward_models import math_compare, math_normalize, math_sympy

_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d{1,300}(?:\.\d{0,300})?|\.\d{1,300})")
MAX_ANSWER_CHARS = 2000  # longer answers are compared as text only
# a dataset column may hold numbers; anything else (a list, a dict) is not an answer
_SCALARS = (str, int, float, Fraction, Decimal)
FORMAT_PATTERN = r"\\boxed\s*\{.*?\}|<answer>.*?</answer>"

_stats = {"calls": 0, "errors": 0}

# ---------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(
    r"(?:(?:the|my)\s+(?:final\s+)?answer\s+(?:is|=)"
    r"|final\s+answer\s*\**\s*(?:is|:|=)"
    r"|^[ \t*#>]*answer\s*\**\s*:)"
    r"[ \t*:]*",
    re.I | re.M,
)
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])-)?(?<![\w.])(?:"
    r"\\[dt]?frac\{\d+\}\{\d+\}"
    r"|(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?!\.\d))?"
    r"|\.\d+)"
)


def _brace_pairs(text: str) -> dict[int, int]:
    """Every `{` index -> its `}` index, in one pass (escaped `\\{` skipped; unclosed ones are absent)."""
    pairs, stack, i = {}, [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def _boxed_groups(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every complete, non-empty `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5`."""
    groups, pairs = [], None
    for m in _BOX.finditer(text):
        j = k = m.end()
        while k < len(text) and text[k] in " \t":
            k += 1
        if k < len(text) and text[k] == "{":
            pairs = _brace_pairs(text) if pairs is None else pairs
            end = pairs.get(k, -1)
            if end < 0:  # truncated: not an answer
                continue
            content, stop = text[k + 1 : end].strip(), end + 1
        elif k > j:  # "\boxed 5": up to the end of the math / line
            raw = re.split(r"\$|\\\]|\\\)|\n", text[k:], maxsplit=1)[0]
            content, stop = raw.strip().rstrip(".,;"), k + len(raw)
        else:
            continue
        if content:
            groups.append((m.start(), stop, content))
    return groups


MAX_JOINED_BOXES = 16
_BOX_GAP = re.compile(r"(?:\s|[,;$]|\\[\[\]()]|\\q?quad|\\text\{\s*(?:and|or|,)?\s*\}|\band\b|\bor\b)*")


def _last_boxed(text: str) -> str | None:
    """The last boxed answer; boxes joined by commas / "and" (`\\boxed{-2} and \\boxed{1}`) are one answer."""
    groups = _boxed_groups(text)
    if not groups:
        return None
    parts = [groups[-1][2]]
    for (_, prev_end, prev), (start, _, _) in zip(reversed(groups[:-1]), reversed(groups[1:])):
        if len(parts) >= MAX_JOINED_BOXES or not _BOX_GAP.fullmatch(text, prev_end, start):
            break
        parts.insert(0, prev)
    # "\\boxed{5} \\boxed{5}" and "\\boxed{15\\frac{39}{40}}, or \\boxed{\\frac{639}{40}}" are one answer,
    # written twice
    if all(p == parts[-1] or is_equivalent(parts[-1], p, timeout=0.5) for p in parts[:-1]):
        return parts[-1]
    return ", ".join(dict.fromkeys(parts))


_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$([^$]+?)\$", re.S)
_PROSE_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")
_IS = re.compile(r"\s(?:is|are|was|equals)\s", re.I)


def _math_spans(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), next(g for g in m.groups() if g is not None)) for m in _MATH_SPAN.finditer(text)]


def _is_prose(text: str) -> bool:
    words = _PROSE_WORD.findall(re.sub(r"\\text\s*\{[^{}]*\}", " ", text))
    return any(w.lower() not in ("and", "or") for w in words)


def _from_phrase(phrase: str) -> str:
    """The answer inside "the answer is <phrase>": `the largest $n$ is 34` -> 34, `3 hours ago` -> 3."""
    outside = re.sub(r"\$[^$]*\$", lambda m: "$" * len(m.group()), phrase)  # no "is" inside math
    hits = list(_IS.finditer(outside))
    if hits:
        phrase = phrase[hits[-1].end() :].strip()
    if not _is_prose(re.sub(r"\$[^$]*\$", " ", phrase)):
        return phrase
    spans = _math_spans(phrase)
    if spans:
        return spans[-1][2].strip()
    numbers = _NUMBER.findall(phrase)
    return re.sub(r"\s", "", numbers[-1]) if numbers else phrase


def _after_answer_is(text: str, start: int) -> str | None:
    rest = text[start:].lstrip()
    for opening, closing in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if rest.startswith(opening):
            end = rest.find(closing, len(opening))
            if end > 0 and "\n\n" not in rest[:end]:
                return rest[len(opening) : end].strip() or None
            break
    line = rest.split("\n", 1)[0]
    line = re.split(r"\.(?=\s|$)", line, maxsplit=1)[0]  # first sentence end; the point in 3.5 is kept
    line = line.strip().strip("*").strip().rstrip(".,;:").strip()
    return _from_phrase(line) or None


def _last_number(text: str) -> str | None:
    """The last number; when it sits inside a math span (`$(7, 6)$`, `$x = \\frac{1}{2}$`) the whole span."""
    numbers = list(_NUMBER.finditer(text))
    if not numbers:
        return None
    last = numbers[-1]
    for start, end, content in reversed(_math_spans(text)):
        if start <= last.start() and last.end() <= end:
            if len(content) <= 200 and not _is_prose(content):
                return content.strip().rstrip(".,;").strip()
            break
        if end <= last.start():
            break
    return re.sub(r"\s", "", last.group())


def extract_answer(text: str, mode: str = "lenient") -> str | None:
    """The final answer a completion commits to, or None.

    Checked in order, the first form present wins: the last closed `<answer>...</answer>` (a `\\boxed{}`
    inside it is unwrapped), the last `\\boxed{}` / `\\fbox{}` / `\\boxed 5`, the last GSM8K `#### N`, the
    last "the answer is ..." / "final answer: ..." / a line starting "Answer:". In mode="lenient" (not
    "strict") a completion with none of these is scored on its last number (`1,000`, `-3.5`, `3/4`,
    `\\frac{3}{4}`)."""
    if not isinstance(text, str) or not text:
        return None
    tags = [t.strip() for t in _ANSWER_TAG.findall(text) if t.strip()]
    if tags:
        inner = tags[-1]
        return extract_answer(inner, "strict") or inner
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    # GSM8K's "#### 72", not a markdown heading "#### Step 2: add"
    hashes = [h.strip().rstrip(".") for h in _HASHES.findall(text) if h.strip() and not _is_prose(h)]
    if hashes:
        return hashes[-1]
    matches = list(_ANSWER_IS.finditer(text))
    for m in reversed(matches):
        found = _after_answer_is(text, m.end())
        if found:
            return found
    if mode == "strict":
        return None
    return _last_number(text)


def gold_answer(text: str) -> str:
    """The reference answer of a dataset row: the `#### N` of a GSM8K solution, the last `\\boxed{}` of a MATH
    solution, an `<answer>` tag or "the answer is" sentence, else the stripped text itself (a bare answer)."""
    text = "" if text is None else str(text)
    return extract_answer(text, mode="strict") or text.strip()


# ---------------------------------------------------------------- equivalence


def is_equivalent(gold: str, pred: str, timeout: float = 2.0, rel_tol: float = math_compare.REL_TOL) -> bool:
    """Whether pred is mathematically the same answer as gold (see the module docstring for the rules).

    Never raises: junk, None, unbalanced LaTeX give False. Wall time is bounded by about `timeout` seconds,
    from any thread (the symbolic step runs in a killable subprocess; its one-off start, importing sympy, is
    not counted)."""
    try:
        if (
            not (isinstance(gold, _SCALARS) and isinstance(pred, _SCALARS))
            or isinstance(gold, bool)
            or isinstance(pred, bool)
        ):
            return False
        gold, pred = str(gold).strip(), str(pred).strip()
        if not gold or not pred:
            return False
        if len(gold) > MAX_ANSWER_CHARS or len(pred) > MAX_ANSWER_CHARS:
            return math_normalize.text_key(gold) == math_normalize.text_key(pred)
        return _equivalent(gold, pred, float(timeout), float(rel_tol))
    except Exception:
        _stats["errors"] += 1
        return False


@functools.lru_cache(maxsize=65536)
def _equivalent(gold: str, pred: str, timeout: float, rel_tol: float) -> bool:
    # a GRPO group repeats the same answers many times: the cache makes repeats free
    _stats["calls"] += 1
    if gold == pred:
        return True
    if _PLAIN_NUMBER.fullmatch(gold) and _PLAIN_NUMBER.fullmatch(pred):  # the common case, in microseconds
        return math_compare.values_close(Fraction(gold.replace(",", "")), Fraction(pred.replace(",", "")), rel_tol)
    ctx = math_compare.Context(deadline=time.monotonic() + timeout, rel_tol=rel_tol)
    g, p = math_normalize.parse_answer(gold), math_normalize.parse_answer(pred)
    return math_compare.top_equal(g, p, ctx)


def verifier_stats() -> dict[str, int]:
    """Counters since start, for logging: calls (uncached comparisons), errors (inputs that raised inside and
    scored False), timeouts (symbolic checks cut off), sympy_calls, restarts (worker processes started)."""
    stats = dict(_stats)
    stats["errors"] += math_sympy.stats["errors"]
    for key in ("timeouts", "sympy_calls", "restarts"):
        stats[key] = math_sympy.stats[key]
    return stats


def timeout_count() -> int:
    """How many symbolic checks hit their timeout (each scored as not equivalent)."""
    return math_sympy.stats["timeouts"]


# ---------------------------------------------------------------- rewards


def math_correctness(
    prompts: list[str], completions: list[str], answer: list, mode: str = "lenient", **_
) -> list[float | None]:
    """1.0 when the completion's final answer equals the gold `answer` column, else 0.0.

    The gold may be a bare answer or a whole solution (GSM8K `#### 72`, MATH `\\boxed{}`): see gold_answer.
    `mode="strict"` gives no credit to a completion without an explicit answer form (no last-number
    fallback)."""
    out: list[float | None] = []
    for completion, gold in zip(completions, answer):
        pred = extract_answer(completion, mode=mode)
        out.append(1.0 if pred is not None and is_equivalent(gold_answer(gold), pred) else 0.0)
    return out


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.S)


def format_reward(prompts: list[str], completions: list[str], pattern: str = FORMAT_PATTERN, **_) -> list[float | None]:
    """1.0 when the completion has the answer format the prompt asked for, else 0.0.

    Default: it contains a `\\boxed{...}` or an `<answer>...</answer>` block (the forms extract_answer reads
    first). Pass `pattern` (a regex, searched with DOTALL) for a stricter layout, e.g.
    `^<think>.+</think>\\s*<answer>.+</answer>\\s*$` for reasoning-then-answer."""
    regex = _compiled(pattern)
    return [1.0 if isinstance(c, str) and regex.search(c) else 0.0 for c in completions]
