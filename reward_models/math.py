"""The math answer verifier: find the final answer in a completion and decide whether it equals the gold one.

Public names (other code and recipes call these):
    extract_answer(text, mode="lenient") -> str | None   the completion's final answer
    gold_answer(text) -> str                             the dataset's answer (`#### 72`, `\\boxed{}`, raw)
    is_equivalent(gold, pred, timeout=2.0) -> bool       mathematical equality; never raises; bounded time
    verifier_stats() -> dict[str, int], timeout_count() -> int
    math_correctness(prompts, completions, answer, mode="lenient", **_)   reward 1.0 / 0.0
    format_reward(prompts, completions, pattern=FORMAT_PATTERN, **_)      reward 1.0 / 0.0
    math_correctness.metrics(), format_reward.metrics() -> {"verifier_timeouts": float}   for the reward logs

Extraction (the forms and their priority): math_extract.
How equality is decided (details in math_clean, math_normalize, math_shapes, math_compare, math_expr, math_eval,
math_sympy):
  * LaTeX and prose are cleaned: `\\left( \\right)`, `\\! \\, \\ `, `\\text{}`, `\\dfrac`, `\\frac12`, `$`,
    `\\$`, thousands separators (`1,000`, `10,\\!000`, `14{,}916`, `1 000`), units and currency words (`5 cm`,
    `5 dollars`, `\\text{ inches}^2`), `^\\circ`, `%`, a leading `x =` or `x \\in`, and backslashes a string
    literal turned into control characters (a form feed + `rac` is `\\frac`).
  * The answer's shape is kept: tuples and intervals are ordered and their brackets matter
    (`(1,2] != (1,2)`, `(1,2) != (2,1)`); sets `\\{...\\}` and comma lists of solutions are unordered (lists
    of tuples as sets: a solution listed twice is one); `;` separates like `,` (`\\{1;2;3\\}`, `(0;-2;6)`) and
    groups solutions (`p=5,q=2;p=7,q=2` == `(5,2),(7,2)`); `a \\pm b` is the list {a+b, a-b}.
  * Inequalities are intervals: `x > 3` == (3, \\infty), `-2 \\le x \\le 7` == `x \\in [-2,7]`, `0<f(x)<1` ==
    (0,1), `1 \\le |z| \\le 2` == [-2,-1] \\cup [1,2]. Sums and products of explicit matrices are evaluated.
  * Named answers equal their value: `x = 5`, `(p,q) = (3,2)`, `AB = 4, CD = 5`, `V_1:V_2 = 11:21`,
    `\\frac{NO}{BO} = ...` (a side without digits, operators or functions is a name; `7 = 11a+c` is not), and in
    a chain `x = 5+5+1 = 11` the named side equals the last one; `y = 2x+1` also equals `2x - y + 1 = 0`;
    `(B)` == `B` == `\\text{(B)}` == `\\textbf{(B)}`; `52_8` == `52`; one-column matrices equal tuples.
  * Numbers are compared exactly as rationals (`0.5 == 1/2 == \\frac{1}{2} == \\dfrac12`,
    `1e3 == 1\\times10^3`), with a relative tolerance of 1e-6 when either side is irrational or a non-integer
    decimal (`\\sqrt2 == 1.414214`), but exactly when one side is an integer (`1000000 != 1000001`). A decimal
    of 4+ significant digits also equals the value it correctly rounds (`0.3333` == 1/3, `2.6667` == 8/3; not
    `0.3`, `3.14`, or the truncation `0.6666` == 2/3). A lone decimal comma is a decimal point when it cannot
    be a thousands separator (`1,22` == 1.22, `0,111` == 0.111; `1,000` == 1000; `(1,2)` is a pair).
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

from reward_models import math_compare, math_extract, math_normalize, math_sympy
from rlhf.rewards import as_text

_PLAIN_NUMBER = re.compile(r"-?(?:[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?|\d{1,300}(?:\.\d{0,300})?|\.\d{1,300})")
MAX_ANSWER_CHARS = 2000  # longer answers are compared as text only
# a dataset column may hold numbers; anything else (a list, a dict) is not an answer
_SCALARS = (str, int, float, Fraction, Decimal)
FORMAT_PATTERN = r"\\boxed\s*\{.*?\}|<answer>.*?</answer>"

_stats = {"calls": 0, "errors": 0}


def extract_answer(text: str, mode: str = "lenient") -> str | None:
    """The final answer a completion commits to, or None (the forms and their order: math_extract).

    The first form present wins: the last `<answer>...</answer>`; a "Final Answer: The final answer is X"
    written after the last `\\boxed{}`; the last `\\boxed{}` / `\\fbox{}` (joined boxes `\\boxed{-2} and
    \\boxed{1}` are one answer); the last GSM8K `#### N`; the last "the answer is ..." / "Answer: ...". In
    mode="lenient" (not "strict") a completion with none of these is scored on its last number (`1,000`,
    `1,22`, `-3.5`, `3/4`, `\\frac{3}{4}`)."""
    return math_extract.extract_answer(text, mode, _same_box)


def _same_box(a: str, b: str) -> bool:
    return is_equivalent(a, b, timeout=0.5)


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
        gold, pred = (math_normalize.repair_escapes(str(x)).strip() for x in (gold, pred))
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
        if math_compare.values_close(Fraction(gold.replace(",", "")), Fraction(pred.replace(",", "")), rel_tol):
            return True
        if "." not in gold and "." not in pred:
            return False  # two integers; with a decimal point, `2.6667` may be the rounding of `2.666666667`
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


def math_correctness(prompts: list, completions: list, answer: list, mode: str = "lenient", **_) -> list[float | None]:
    """1.0 when the completion's final answer equals the gold `answer` column, else 0.0.

    A completion is text or, from a conversational dataset, a message list (its last message is read).
    The gold may be a bare answer or a whole solution (GSM8K `#### 72`, MATH `\\boxed{}`): see gold_answer.
    `mode="strict"` gives no credit to a completion without an explicit answer form (no last-number
    fallback)."""
    out: list[float | None] = []
    for completion, gold in zip(completions, answer):
        pred = extract_answer(as_text(completion), mode=mode)
        out.append(1.0 if pred is not None and is_equivalent(gold_answer(gold), pred) else 0.0)
    return out


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.S)


def format_reward(prompts: list, completions: list, pattern: str = FORMAT_PATTERN, **_) -> list[float | None]:
    """1.0 when the completion (text, or a message list: its last message) has the answer format the prompt asked
    for, else 0.0.

    Default: it contains a `\\boxed{...}` or an `<answer>...</answer>` block (the forms extract_answer reads
    first). Pass `pattern` (a regex, searched with DOTALL) for a stricter layout, e.g.
    `^<think>.+</think>\\s*<answer>.+</answer>\\s*$` for reasoning-then-answer."""
    regex = _compiled(pattern)
    return [1.0 if c is not None and regex.search(as_text(c)) else 0.0 for c in completions]


def _metrics() -> dict[str, float]:
    """What the reward plumbing logs as `reward/<reward name>/<key>`: the symbolic checks that hit their time
    limit so far in this process (each scored as not equivalent), as verifier_stats() counts them."""
    return {"verifier_timeouts": float(verifier_stats()["timeouts"])}


math_correctness.metrics = _metrics
format_reward.metrics = _metrics
