"""Sentences of a run report, with the recorded values marked.

A report tells a run's story in the ledger's words, but most of what it
quotes was recorded from outside: job and step names, error messages,
reasons typed by operators, details of rejected records. Such text is
untrusted (an error message may hold `<script>`, a terminal escape or a
Markdown link), so every sentence keeps it apart as `Recorded` pieces,
and each format escapes them its own way: HTML escapes them, Markdown
puts them in code spans, JSON joins them as they are.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Any

__all__ = [
    "Recorded",
    "Who",
    "Words",
    "checkpoint_words",
    "joined",
    "recorded",
    "resume_words",
    "shown_time",
    "visible",
    "who",
]


class Recorded(str):
    """A value as the ledger recorded it, quoted inside a sentence."""

    __slots__ = ()


class Who(Recorded):
    """Who decided or acted (an operator, a worker): recorded, and shown
    as given even where the redaction policy would match it, as the
    output guard leaves `by` and `actor` alone (`ledger.redaction`)."""

    __slots__ = ()


# A sentence: the ledger's own words and recorded values, in order.
Words = tuple[str, ...]


def recorded(value: Any) -> Recorded:
    return Recorded(value if isinstance(value, str) else str(value))


def who(value: Any) -> Who:
    return Who(value if isinstance(value, str) else str(value))


def joined(words: Words) -> str:
    return "".join(words)


def visible(text: str, *, keep_newlines: bool = False) -> str:
    """The text with its control and bidirectional formatting characters
    written as escapes (`\\x1b`, `\\u202e`): shown raw, they would steer
    a terminal or make the text read differently from what it holds."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if keep_newlines and char == "\n":
            out.append(char)
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def shown_time(at: str | None) -> str:
    """'2026-12-04 10:30:01.123Z': every time the ledger records is UTC."""
    if not at:
        return "-"
    moment = datetime.fromisoformat(at)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def checkpoint_words(checkpoint: dict[str, Any] | None) -> Words:
    """'step `enrich`, batch 40, rows 200,001–205,000 (`row` 205,000)'."""
    if checkpoint is None:
        return ("none yet",)
    return (
        "step ",
        recorded(checkpoint["step"]),
        f", batch {checkpoint['batch']}, rows ",
        f"{_count(checkpoint['first_record'])}–{_count(checkpoint['last_record'])}",
        " (",
        recorded(checkpoint.get("position_kind") or "position"),
        f" {_count(checkpoint['position'])})",
    )


def resume_words(point: dict[str, Any] | None) -> Words:
    """Where the next attempt starts, as `ledger status` says it."""
    if point is None:
        return ("nothing left to do",)
    where: Words = ("step ", recorded(point["step"]), f", batch {point['batch']}")
    if point["from_record"] <= 1 and not point["position"]:
        return (*where, ", from the start")
    return (
        *where,
        f", from row {_count(point['from_record'])} (after ",
        recorded(point.get("position_kind") or "position"),
        f" {_count(point['position'])})",
    )
