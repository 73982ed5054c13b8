"""Find the final answer a completion commits to (the extraction half of reward_models.math).

The forms, checked in order (the first one present wins):
  1. the last closed `<answer>...</answer>` (a `\\boxed{}` inside it is unwrapped);
  2. a "Final Answer: The final answer is X" sentence written AFTER the last `\\boxed{}` (a model that boxes an
     intermediate value and then states its final answer means the latter);
  3. the last `\\boxed{}` / `\\fbox{}` / `\\boxed 5`; boxes joined by commas, "and", or a short phrase with "and"
     (`\\boxed{1} papers and \\boxed{2} bins`) are one answer (`1, 2`);
  4. the last GSM8K `#### N`;
  5. the last "the answer is ..." / "final answer: ..." / a line starting "Answer:";
  6. in mode="lenient" only: the last number (`1,000`, `1,22`, `14{,}916`, `-3.5`, `3/4`, `\\frac{3}{4}`),
     widened to its math span (`$(7, 6)$`), or the whole text when it is only math spans joined by "and" /
     "or" / commas (`$1$ and $2$ and $3$` -> `1, 2, 3`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from reward_models import math_expr
from reward_models.math_clean import repair_escapes

MAX_JOINED_BOXES = 16

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
# numbers in prose: 1,000 and 14{,}916 and 32,\! 349 (thousands), 1,22 (a decimal comma: not after `(`, `,`,
# not before `,5` or `)`, so the tuple (1,2) and the list 1,2,3 are not decimals), 3.5, 3/4, \frac{3}{4}
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])-)?(?<![\w.])(?:"
    r"\\[dt]?frac\{\d+\}\{\d+\}"
    r"|(?<![(\[{,;])\d+,\d+(?![\d,]|\.\d|\s*[)\]}])(?<!\d,\d{3})"
    r"|(?:\d{1,3}(?:(?:,|\{\s*,\s*\}|,\s*\\!)\s?\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?!\.\d))?"
    r"|\.\d+)"
)
_WHOLE_NUMBER = re.compile(r"[-+]?\d{1,3}(?: \d{3})+(?:[.,]\d+)?")  # "1 000 000" is one number


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


_BOX_GAP = re.compile(r"(?:\s|[,;$]|\\[\[\]()]|\\q?quad|\\text\{\s*(?:and|or|,)?\s*\}|\band\b|\bor\b)*")
_SYMBOL_GAP = re.compile(r"[^\w\n]{0,20}")  # `\boxed{35} ++++++ \boxed{4}`
_AND = re.compile(r"\band\b")


def _joins(gap: str) -> bool:
    """Whether two boxes with this text between them are parts of one answer: only separators, only symbols,
    or a short phrase on one line with "and" (`\\boxed{1} papers and \\boxed{2} bins`, `\\) and \\( y_2 =`)."""
    if _BOX_GAP.fullmatch(gap) or _SYMBOL_GAP.fullmatch(gap):
        return True
    return len(gap) <= 60 and "\n" not in gap and _AND.search(gap) is not None and not re.search(r"\.\s", gap)


def _last_boxed(text: str, same: Callable[[str, str], bool]) -> tuple[str, int] | None:
    """The last boxed answer and where its box ends; joined boxes (see _joins) are one answer, and boxes that
    repeat one value (`\\boxed{5} \\boxed{5}`, `\\boxed{15\\frac{39}{40}}, or \\boxed{\\frac{639}{40}}`) are it."""
    groups = _boxed_groups(text)
    if not groups:
        return None
    parts = [groups[-1][2]]
    for (_, prev_end, prev), (start, _, _) in zip(reversed(groups[:-1]), reversed(groups[1:])):
        if len(parts) >= MAX_JOINED_BOXES or not _joins(text[prev_end:start]):
            break
        parts.insert(0, prev)
    end = groups[-1][1]
    if all(p == parts[-1] or same(parts[-1], p) for p in parts[:-1]):
        return parts[-1], end
    return ", ".join(dict.fromkeys(parts)), end


_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$([^$]+?)\$", re.S)
_PROSE_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")
_NOT_PROSE = re.compile(
    r"\\text\s*\{[^{}]*\}|\\(?:begin|end|mathrm|mathbf|mathit|operatorname)\s*\{[^{}]*\}|_\{[^{}]*\}"
)
_IS = re.compile(r"\s(?:is|are|was|equals)\s", re.I)
_SPAN_GAP = re.compile(r"(?:\s|[,;.]|\band\b|\bor\b|\\q?quad)*", re.I)


def _math_spans(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), next(g for g in m.groups() if g is not None)) for m in _MATH_SPAN.finditer(text)]


def _is_prose(text: str) -> bool:
    """Words of three or more letters outside LaTeX (`\\text{}`, `\\begin{pmatrix}`, `S_{MBCN}`, `\\mathrm{cm}`
    are not prose); "and" / "or" do not count."""
    words = _PROSE_WORD.findall(_NOT_PROSE.sub(" ", text))
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
    rest = re.sub(r'^\s*(?:\\?"|\u201c)?\s*', "", text[start:])  # a quoted answer: "$12$ and $13$"
    sentence = re.split(r"\.(?=\s|$)|\n", rest, maxsplit=1)[0]
    joined = _joined_spans(re.sub(r'\s*(?:\\?"|\u201d)\s*$', "", sentence))
    if joined is not None:
        return joined
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


def _joined_spans(text: str) -> str | None:
    """`$1$ and $2$ and $3$` -> `1, 2, 3`: a text that is nothing but two or more math spans and connectives."""
    spans = _math_spans(text)
    if len(spans) < 2 or len(spans) > MAX_JOINED_BOXES:
        return None
    edges = [0] + [x for start, end, _ in spans for x in (start, end)] + [len(text)]
    if not all(_SPAN_GAP.fullmatch(text, edges[i], edges[i + 1]) for i in range(0, len(edges), 2)):
        return None
    contents = [c.strip().rstrip(".,;").strip() for _, _, c in spans]
    if not all(contents) or any(_is_prose(c) for c in contents):
        return None
    return ", ".join(contents)


MAX_BARE_CHARS = 300
_WORD_TOKEN = re.compile(r"(?<!\S)[A-Za-z]{2,}(?!\S)")
_MATH_WORDS = {"and", "or"} | math_expr.FUNCTIONS


def _is_bare_answer(text: str) -> bool:
    """A short one-line text with no prose and no math delimiters is an answer as a whole (`10, 4, -2`,
    `\\tfrac12 + \\frac1{72}`, `(p,q)=(3,2)`, `5x - 7y + 4 = 0`), not just its last number; a worked line
    `10 - 3 = 7` (an equation of numbers only) is not."""
    if not text or len(text) > MAX_BARE_CHARS or "\n" in text or re.search(r"\$|\\[(\[]", text) or _is_prose(text):
        return False
    if any(w.lower() not in _MATH_WORDS for w in _WORD_TOKEN.findall(text)):  # "It is 0.5"
        return False
    return "=" not in text or re.search(r"[A-Za-z]", text) is not None


def _last_number(text: str) -> str | None:
    """The last number; when it sits inside a math span (`$(7, 6)$`, `$x = \\frac{1}{2}$`) the whole span."""
    bare = text.strip().strip("$").strip()
    if _WHOLE_NUMBER.fullmatch(bare) or _is_bare_answer(bare):
        return bare
    joined = _joined_spans(text)
    if joined is not None:
        return joined
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


STATEMENT_WINDOW = 4000  # characters read after "the answer is"


def _last_statement(text: str, final_only: bool) -> tuple[int, str] | None:
    """(position, answer) of the last "the answer is" / "final answer:" / "Answer:" statement that has an
    answer; with final_only, the last "final answer" one whose answer is not prose."""
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        if final_only and "final" not in m.group().lower():
            continue
        found = _after_answer_is(text[: m.end() + STATEMENT_WINDOW], m.end())
        if found and not (final_only and _is_prose(found)):
            return m.start(), found
    return None


def extract_answer(text: str, mode: str, same: Callable[[str, str], bool]) -> str | None:
    """See the module docstring; `same(a, b)` decides whether two boxes hold one value."""
    if not isinstance(text, str) or not text:
        return None
    text = repair_escapes(text)
    tags = [t.strip() for t in _ANSWER_TAG.findall(text) if t.strip()]
    if tags:
        inner = tags[-1]
        return extract_answer(inner, "strict", same) or inner
    boxed = _last_boxed(text, same)
    if boxed is not None and "final" in text[boxed[1] :].lower():
        final = _last_statement(text[boxed[1] :], final_only=True)
        if final is not None:
            return final[1]
    if boxed is not None:
        return boxed[0]
    # GSM8K's "#### 72", not a markdown heading "#### Step 2: add"
    hashes = [h.strip().rstrip(".") for h in _HASHES.findall(text) if h.strip() and not _is_prose(h)]
    if hashes:
        return hashes[-1]
    stated = _last_statement(text, final_only=False)
    if stated is not None:
        return stated[1]
    if mode == "strict":
        return None
    return _last_number(text)
