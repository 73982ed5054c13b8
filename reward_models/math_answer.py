"""The parsed form of an answer (built by math_normalize.parse_answer, compared by math_compare)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Answer:
    kind: str
    value: object = None
    items: list = field(default_factory=list)
    open: str = ""
    close: str = ""
    text: str = ""  # the cleaned text this node came from
    percent: bool = False
    degree: bool = False
