"""Secrets in text: the built-in patterns, and named fields written as text.

Each built-in is a rule that rewrites a text, replacing what it finds with
a mark that names what was removed (`[redacted:email]`) and says nothing
of its length or content. The rules are written so that applying them
again changes nothing: no mark matches any rule, and a rule's output
never makes text that an earlier rule would match.

- `bearer`: the credentials of an `Authorization:` (or `Proxy-
  Authorization:`) header in any of its usual spellings, and a `Bearer
  TOKEN` anywhere; keys named `authorization` in a payload;
- `url_password`: the password of a URL's user info (`scheme://user:PW@
  host` keeps the user and the host), `password=`, `passwd=` and `pwd=`
  parameters; keys named `password`, `passwd` or `pwd` in a payload;
- `card`: card numbers, 13 to 19 digits, alone or in groups joined by
  single spaces or dashes as cards are printed (4-4-4-4, 4-6-5), kept only
  when the Luhn check fails, so that most order ids and counters are left
  alone;
- `email`: e-mail addresses with a dotted domain (`ops@example` is kept:
  it is how operators name themselves).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson

__all__ = [
    "BUILTINS",
    "IMPLIED_KEYS",
    "REDACTED",
    "TextRule",
    "builtin_rules",
    "custom_rule",
    "field_rule",
    "has_mark",
    "luhn_valid",
    "mark",
    "redact_embedded",
]

# What a field's or path's value becomes: its key, kept beside it, says
# what was removed.
REDACTED = "[redacted]"

BUILTINS = ("bearer", "url_password", "card", "email")

# Keys whose values are redacted whole by a built-in, at any depth.
IMPLIED_KEYS = {
    "authorization": "bearer",
    "proxy-authorization": "bearer",
    "password": "url_password",
    "passwd": "url_password",
    "pwd": "url_password",
}

TextRule = Callable[[str], str]

# Embedded structures are looked for only in texts up to this size, and at
# most this many times a text, so that a hostile text costs little.
EMBEDDED_MAX_CHARS = 100_000
EMBEDDED_MAX_TRIES = 200

_MARK_PREFIX = "[redacted"


def mark(name: str) -> str:
    """The mark that replaces what the rule `name` found."""
    return f"{_MARK_PREFIX}:{name}]"


def has_mark(text: str) -> bool:
    """Whether the text holds a redaction mark."""
    return _MARK_PREFIX in text


# bearer

_AUTH_SEPARATOR = r"""(\\?["']?[ \t]*[:=][ \t]*\\?["']?)"""
_AUTHORIZATION = re.compile(
    r"(?i)(?<![\w-])((?:proxy-)?authorization)"
    + _AUTH_SEPARATOR
    + r"""([^\r\n"'\\,;]+)"""
)

# ('authorization', b'Basic ...'): a header as Python prints a pair.
_AUTHORIZATION_PAIR = re.compile(
    r"""(?i)(["'])((?:proxy-)?authorization)\1(\s*,\s*b?)(["'])((?:(?!\4).)+)\4"""
)
_BEARER = re.compile(r"(?i)(?<![\w-])(bearer)([ \t]+)([A-Za-z0-9\-._~+/%]{8,}=*)")


def _redact_bearer(text: str) -> str:
    text = _AUTHORIZATION.sub(rf"\1\2{mark('bearer')}", text)
    text = _AUTHORIZATION_PAIR.sub(rf"\1\2\1\3\4{mark('bearer')}\4", text)
    return _BEARER.sub(rf"\1\2{mark('bearer')}", text)


# url_password

_URL_USERINFO = re.compile(
    r"""(?i)(?<![\w+.-])([a-z][a-z0-9+.-]*:/{1,3})([^\s/?#@:"'<>\\]*):"""
    r"""([^\s/?#"'<>\\]*)@"""
)
_PASSWORD_PARAMETER = re.compile(
    r"""(?i)(?<![\w-])(password|passwd|pwd)=([^\s&;"'<>\\]+)"""
)


def _redact_url_password(text: str) -> str:
    text = _URL_USERINFO.sub(rf"\1\2:{mark('url_password')}@", text)
    return _PASSWORD_PARAMETER.sub(rf"\1={mark('url_password')}", text)


# card

# A run of digit groups joined by single spaces or dashes, that starts and
# ends at a word's edge (not inside an id, a decimal or a version). The
# second look-behind starts runs only at their first group, so that a long
# run costs one pass.
_DIGIT_RUN = re.compile(r"(?<![\w.-])(?<!\d[ -])(?>\d+(?:[ -]\d+)*+)(?![\w-]|\.\d)")
_GROUP = re.compile(r"\d+")


def luhn_valid(digits: str) -> bool:
    """The Luhn check that every card number passes."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_shaped(sizes: list[int]) -> bool:
    """Whether digit groups are grouped as cards are printed: one group of
    13 to 19 digits, or 4 digits first, then groups of 4 to 6, the last of
    1 to 6 (4-4-4-4, 4-6-5, 4-4-4-4-3): so that numbers that merely stand
    side by side ("138 3762846409") are not read as one card."""
    if len(sizes) == 1:
        return True
    return sizes[0] == 4 and all(4 <= n <= 6 for n in sizes[1:-1]) and sizes[-1] <= 6


def _card_spans(run: str) -> list[tuple[int, int]]:
    """Where card numbers lie in a run of digit groups: the longest span of
    whole groups, 13 to 19 digits, card-shaped, that passes the Luhn check,
    each time."""
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(run)]
    spans: list[tuple[int, int]] = []
    first = 0
    while first < len(groups):
        found = None
        digits = ""
        for last in range(first, len(groups)):
            digits += run[groups[last][0] : groups[last][1]]
            if len(digits) > 19:
                break
            sizes = [end - start for start, end in groups[first : last + 1]]
            if len(digits) >= 13 and _card_shaped(sizes) and luhn_valid(digits):
                found = last
        if found is None:
            first += 1
            continue
        spans.append((groups[first][0], groups[found][1]))
        first = found + 1
    return spans


def _redact_run(match: re.Match[str]) -> str:
    run = match.group(0)
    spans = _card_spans(run)
    for start, end in reversed(spans):
        run = run[:start] + mark("card") + run[end:]
    return run


def _redact_card(text: str) -> str:
    return _DIGIT_RUN.sub(_redact_run, text)


# email

_EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9._%+-]++@(?:[A-Za-z0-9-]++\.)+[A-Za-z]{2,}+(?![\w-])"
)


def _redact_email(text: str) -> str:
    return _EMAIL.sub(mark("email"), text)


_BUILTIN_RULES: dict[str, TextRule] = {
    "bearer": _redact_bearer,
    "url_password": _redact_url_password,
    "card": _redact_card,
    "email": _redact_email,
}


def builtin_rules(names: Iterable[str]) -> list[TextRule]:
    """The rules of the named built-ins, in the order that keeps them
    idempotent together (bearer, url_password, card, email)."""
    chosen = set(names)
    return [rule for name, rule in _BUILTIN_RULES.items() if name in chosen]


_ANY_MARK = re.compile(r"\[redacted(?::[a-z0-9_-]+)?\]")


def custom_rule(name: str, pattern: re.Pattern[str]) -> TextRule:
    """A named pattern's rule: each match becomes `[redacted:NAME]`; a match
    that touches a mark already made is left alone, so that applying it
    again changes nothing."""
    replacement = mark(name)

    def redact(text: str) -> str:
        if not text:
            return text
        marks = [(m.start(), m.end()) for m in _ANY_MARK.finditer(text)]

        def replace(match: re.Match[str]) -> str:
            start, end = match.span()
            if start == end or any(s < end and start < e for s, e in marks):
                return match.group(0)
            return replacement

        return pattern.sub(replace, text)

    return redact


# Fields written as text: `name=value`, `name: value`, `"name": "value"`,
# `'name': 'value'`, `\"name\": \"value\"` (JSON inside a JSON string) and
# `('name', b'value')` (a header pair as Python prints it).

_VALUE_STOPS = frozenset(" \t\r\n,;&)}]\"'<>")


def field_rule(names: Iterable[str]) -> TextRule | None:
    """The rule that blanks the values of the named fields written as text;
    None when no field is named."""
    chosen = sorted({name for name in names if name}, key=len, reverse=True)
    if not chosen:
        return None
    alternatives = "|".join(re.escape(name) for name in chosen)
    keyed = re.compile(
        rf"""(?i)(?<![\w.-])(\\?["']?)(?:{alternatives})\1[ \t]*[:=][ \t]*"""
    )
    paired = re.compile(rf"""(?i)\(\s*(["'])(?:{alternatives})\1\s*,\s*(?=b?["'])""")

    def redact(text: str) -> str:
        return _blank_values(_blank_values(text, keyed), paired)

    return redact


def _blank_values(text: str, key: re.Pattern[str]) -> str:
    parts: list[str] = []
    position = 0
    for match in key.finditer(text):
        if match.start() < position:
            continue
        span = _value_span(text, match.end())
        if span is None:
            continue
        start, end, quote = span
        parts.append(text[position:start])
        parts.append(f"{quote}{REDACTED}{quote}")
        position = end
    parts.append(text[position:])
    return "".join(parts)


def _value_span(text: str, start: int) -> tuple[int, int, str] | None:
    """Where the value that starts at `start` ends, and its quote."""
    if start >= len(text) or text.startswith(_MARK_PREFIX, start):
        return None
    if text.startswith('b"', start) or text.startswith("b'", start):
        end, quote = _quoted_end(text, start + 1, text[start + 1])
        return start, end, quote
    if text.startswith('\\"', start):
        closing = text.find('\\"', start + 2)
        end = len(text) if closing < 0 else closing + 2
        return start, end, '\\"'
    char = text[start]
    if char in "\"'":
        end, quote = _quoted_end(text, start, char)
        return start, end, quote
    if char in "{[":
        end = balanced_end(text, start)
        return start, len(text) if end < 0 else end, ""
    end = start
    while end < len(text) and text[end] not in _VALUE_STOPS:
        end += 1
    return (start, end, "") if end > start else None


def _quoted_end(text: str, start: int, quote: str) -> tuple[int, str]:
    index = start + 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == quote:
            return index + 1, quote
        index += 1
    return len(text), quote


def balanced_end(text: str, start: int) -> int:
    """The index just after the bracket that closes the one at `start`, or
    -1 when it never closes; brackets inside quotes do not count."""
    closing = {"{": "}", "[": "]"}
    stack: list[str] = []
    quote = ""
    index = start
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in closing:
            stack.append(closing[char])
        elif char in "}]":
            if not stack or stack.pop() != char:
                return -1
            if not stack:
                return index + 1
        index += 1
    return -1


def redact_embedded(text: str, redact: Callable[[Any], Any]) -> str:
    """The text with each JSON or Python literal written in it (a record
    printed in an error message) redacted as a structure, so that fields
    and paths are found in it; literals that need no change keep their
    spelling."""
    if len(text) > EMBEDDED_MAX_CHARS:
        return text
    parts: list[str] = []
    position = 0
    tries = 0
    index = _next_bracket(text, 0)
    while index >= 0 and tries < EMBEDDED_MAX_TRIES:
        tries += 1
        end = balanced_end(text, index)
        parsed = _literal(text[index:end]) if end > 0 else None
        if parsed is None:
            index = _next_bracket(text, index + 1)
            continue
        value, as_json = parsed
        redacted = redact(value)
        if redacted != value:
            parts.append(text[position:index])
            parts.append(_spelled(redacted, as_json))
            position = end
        index = _next_bracket(text, end)
    parts.append(text[position:])
    return "".join(parts)


def _next_bracket(text: str, start: int) -> int:
    found = [i for i in (text.find("{", start), text.find("[", start)) if i >= 0]
    return min(found) if found else -1


def _literal(source: str) -> tuple[Any, bool] | None:
    """The structure written in `source`, and whether it was JSON."""
    try:
        value = orjson.loads(source)
        as_json = True
    except orjson.JSONDecodeError:
        try:
            value = ast.literal_eval(source)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
        as_json = False
    if not isinstance(value, dict | list):
        return None
    return value, as_json


def _spelled(value: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps(value, ensure_ascii=False, default=str)
    return repr(value)
