"""The redaction policy: what is removed from job data before it is recorded.

A `Redaction` names field names (matched at any depth, whatever their
case), dotted paths from a payload's root, and value patterns: the
built-ins of `ledger.patterns`, on by default, and named regular
expressions. It redacts a payload (a record, a message, an effect's
result) as a structure and a text (an error message, a traceback) as
text, where the patterns apply and fields are found in `name=value`,
`"name": "value"` and printed literals.

A path is dotted (`card.number`); `*` stands for any key or list item
(`customer.*.email`); a number picks a list item (`items.0.sku`, also
written `items[0].sku`); a list met where a name is expected is looked
through, so `customers.email` reaches the e-mail of every customer.

The ledger-wide policy (`ledger.policy`) is put in force when a process
opens the ledger; a job's own `redaction` (and its `sensitive_fields`)
is merged into it, and a merge only ever adds: a job cannot switch off
what the ledger redacts.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ledger.errors import LedgerError
from ledger.patterns import (
    BUILTINS,
    IMPLIED_KEYS,
    REDACTED,
    TextRule,
    builtin_rules,
    custom_rule,
    field_rule,
    mark,
    redact_embedded,
)

__all__ = [
    "BUILTINS",
    "DEFAULT",
    "NOTHING",
    "REDACTED",
    "Redaction",
    "RedactionError",
    "enforced",
    "in_force",
    "put_in_force",
    "restored",
    "shown",
]

_PATTERN_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")

# Ledger fields that name who decided or acted: the audit trail needs them
# as they were given, so the output guard leaves them alone.
_WHO_KEYS = frozenset({"by", "actor"})

# Where recorded job data starts in a read document: paths apply from here.
_PAYLOAD_KEYS = frozenset({"payload", "result", "params"})


class RedactionError(LedgerError):
    """A redaction setting that cannot be used."""


@dataclasses.dataclass(frozen=True, init=False)
class Redaction:
    """A redaction policy; see the module docstring."""

    fields: frozenset[str]
    paths: tuple[str, ...]
    patterns: tuple[tuple[str, str], ...]
    builtins: frozenset[str]

    def __init__(
        self,
        fields: Iterable[str] = (),
        paths: Iterable[str] = (),
        patterns: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        builtins: Iterable[str] = BUILTINS,
    ) -> None:
        # One name given as text is a name, not its letters.
        fields = [fields] if isinstance(fields, str) else fields
        paths = [paths] if isinstance(paths, str) else paths
        builtins = [builtins] if isinstance(builtins, str) else builtins
        pairs = dict(patterns.items() if isinstance(patterns, Mapping) else patterns)
        chosen = frozenset(builtins)
        unknown = sorted(chosen - set(BUILTINS))
        if unknown:
            raise RedactionError(
                f"unknown built-in pattern {', '.join(unknown)}; the built-ins "
                f"are {', '.join(BUILTINS)}"
            )
        for name, regex in pairs.items():
            check_pattern(name, regex)
        object.__setattr__(
            self, "fields", frozenset(_field(name) for name in fields if name.strip())
        )
        object.__setattr__(
            self, "paths", tuple(sorted({_path_text(path) for path in paths}))
        )
        object.__setattr__(self, "patterns", tuple(sorted(pairs.items())))
        object.__setattr__(self, "builtins", chosen)

    def merged(self, other: Redaction) -> Redaction:
        """Both policies at once: what either redacts is redacted. A pattern
        both name keeps this policy's regex."""
        return _merge(self, other)

    def with_fields(self, names: Iterable[str]) -> Redaction:
        """This policy with more field names."""
        extra = frozenset(_field(name) for name in names)
        if extra <= self.fields:
            return self
        return Redaction(self.fields | extra, self.paths, self.patterns, self.builtins)

    def redact(self, value: Any) -> Any:
        """The value as it may be recorded: a text redacted as text, a
        structure field by field; anything else as its text."""
        compiled = _compiled(self)
        try:
            return compiled.walk(value, compiled.start)
        except RecursionError:
            return mark("too-deep")

    def redact_text(self, text: str) -> str:
        return _compiled(self).text(text)

    def as_dict(self) -> dict[str, Any]:
        """The policy as recorded in `LedgerPolicy.PolicySet`."""
        return {
            "fields": sorted(self.fields),
            "paths": list(self.paths),
            "patterns": [{"name": n, "regex": r} for n, r in self.patterns],
            "builtins": [name for name in BUILTINS if name in self.builtins],
        }


def check_pattern(name: str, regex: str) -> re.Pattern[str]:
    """The compiled pattern; refused, naming the fix, when it cannot be one."""
    if not _PATTERN_NAME.match(name):
        raise RedactionError(
            f"pattern name {name!r}: use 1 to 40 lowercase letters, digits, - "
            "or _, starting with a letter (it names the mark, [redacted:NAME])"
        )
    if name in BUILTINS:
        raise RedactionError(
            f"pattern name {name!r} is a built-in's; give your pattern its own name"
        )
    try:
        compiled = re.compile(regex)
    except re.error as error:
        raise RedactionError(
            f"pattern {name}: {regex!r} is not a valid regular expression "
            f"({error}); fix it, and quote it for the shell"
        ) from None
    if compiled.fullmatch(""):
        raise RedactionError(
            f"pattern {name}: {regex!r} matches empty text, so it would mark "
            "every position; make it match at least one character"
        )
    return compiled


def _field(name: str) -> str:
    return name.strip().lower()


def _path_text(path: str) -> str:
    """A path as stored: dotted, lowercase, list items as numbers or `*`."""
    text = re.sub(r"\[(\d+|\*|)\]", lambda m: "." + (m.group(1) or "*"), path.strip())
    segments = text.lower().split(".")
    if any(not segment.strip() for segment in segments):
        raise RedactionError(
            f"path {path!r}: write names joined by single dots, from the "
            "payload's root, such as card.number or customer.*.email"
        )
    return ".".join(segment.strip() for segment in segments)


@functools.lru_cache(maxsize=256)
def _merge(first: Redaction, second: Redaction) -> Redaction:
    patterns = dict(second.patterns)
    patterns.update(first.patterns)
    return Redaction(
        first.fields | second.fields,
        first.paths + second.paths,
        patterns,
        first.builtins | second.builtins,
    )


# A position while walking a structure: for each path, how many of its
# segments the keys walked so far have matched.
_States = frozenset[tuple[int, int]]


class _Compiled:
    """A policy ready to apply: its rules built once."""

    def __init__(self, policy: Redaction) -> None:
        self.fields = policy.fields
        self.paths = [tuple(path.split(".")) for path in policy.paths]
        self.start: _States = frozenset((index, 0) for index in range(len(self.paths)))
        self.implied = {
            key: name for key, name in IMPLIED_KEYS.items() if name in policy.builtins
        }
        rules: list[TextRule] = []
        fields = field_rule(self.fields | set(self.implied))
        if fields is not None:
            rules.append(fields)
        rules.extend(builtin_rules(policy.builtins))
        rules.extend(custom_rule(n, re.compile(r)) for n, r in policy.patterns)
        self.rules = rules
        self.embedded = bool(self.fields or self.paths or self.implied)

    def text(self, text: str) -> str:
        if self.embedded and ("{" in text or "[" in text):
            text = redact_embedded(text, lambda value: self.walk(value, self.start))
        for rule in self.rules:
            text = rule(text)
        return text

    def walk(self, value: Any, states: _States) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, int):
            return self._number(value)
        if isinstance(value, bytes | bytearray):
            decoded = bytes(value).decode("utf-8", "replace")
            redacted = self.text(decoded)
            return value if redacted == decoded else redacted.encode()
        if isinstance(value, Mapping):
            return self._mapping(value, states)
        if isinstance(value, list | tuple | set | frozenset):
            secret = self._pair(value)
            items = [
                secret
                if index == 1 and secret is not None
                else self._item(item, self._advance(states, str(index), listed=True))
                for index, item in enumerate(value)
            ]
            return items if isinstance(value, list) else type(value)(items)
        return self.text(str(value))

    def _pair(self, value: Any) -> Any:
        """The mark for a (name, value) pair whose name is a secret's, as
        headers are often given (`[("authorization", b"...")]`); else None."""
        if not isinstance(value, list | tuple) or len(value) != 2:
            return None
        name = (
            value[0].decode("utf-8", "replace")
            if isinstance(value[0], bytes)
            else value[0]
        )
        if not isinstance(name, str):
            return None
        if name.lower() in self.fields:
            return REDACTED
        if name.lower() in self.implied:
            return mark(self.implied[name.lower()])
        return None

    def _item(self, value: Any, states: tuple[_States, bool]) -> Any:
        following, complete = states
        return REDACTED if complete else self.walk(value, following)

    def _mapping(self, value: Mapping[Any, Any], states: _States) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key, item in value.items():
            name = str(key).lower()
            if name in self.fields:
                redacted: Any = REDACTED
            elif name in self.implied:
                redacted = mark(self.implied[name])
            else:
                redacted = self._item(item, self._advance(states, name, listed=False))
            shown_key = self.text(key) if isinstance(key, str) else key
            while shown_key in result:
                shown_key = f"{shown_key}'"
            result[shown_key] = redacted
        return result

    def _advance(
        self, states: _States, key: str, *, listed: bool
    ) -> tuple[_States, bool]:
        """The states after stepping into `key` (a list index when
        `listed`), and whether a path ends there."""
        if not states:
            return states, False
        following: set[tuple[int, int]] = set()
        complete = False
        for path, matched in states:
            segment = self.paths[path][matched]
            if segment in ("*", key):
                if matched + 1 == len(self.paths[path]):
                    complete = True
                else:
                    following.add((path, matched + 1))
            elif listed and not segment.isdigit():
                # A list where a name is expected is looked through.
                following.add((path, matched))
        return frozenset(following), complete

    def _number(self, value: int) -> Any:
        # A card number, or whatever a pattern finds, sent as a number.
        text = str(value)
        redacted = self.text(text)
        return value if redacted == text else redacted

    def shown(self, value: Any, states: _States) -> Any:
        """The output guard's walk: like `walk`, but through dataclasses,
        leaving who-decided fields alone, with paths from each payload."""
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            copied = copy.copy(value)
            for item in dataclasses.fields(value):
                current = getattr(value, item.name)
                object.__setattr__(
                    copied, item.name, self._shown_item(item.name, current)
                )
            return copied
        if isinstance(value, Mapping):
            return {
                (self.text(key) if isinstance(key, str) else key): self._shown_item(
                    str(key), item
                )
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            secret = self._pair(value)
            items = [
                secret
                if index == 1 and secret is not None
                else self.shown(item, states)
                for index, item in enumerate(value)
            ]
            return items if isinstance(value, list) else tuple(items)
        return self.walk(value, frozenset())

    def _shown_item(self, key: str, value: Any) -> Any:
        if key in _WHO_KEYS:
            return value
        if key in _PAYLOAD_KEYS:
            return self.walk(value, self.start)
        return self.shown(value, frozenset())


@functools.lru_cache(maxsize=64)
def _compiled(policy: Redaction) -> _Compiled:
    return _Compiled(policy)


# Every built-in on, nothing else: the policy of a ledger nobody set one
# for, and what logs and output are always redacted with.
DEFAULT = Redaction()

# A policy that adds nothing: a job's own, until it names something.
NOTHING = Redaction(builtins=())

_in_force = DEFAULT


def in_force() -> Redaction:
    """The policy this process applies: the ledger-wide one once a ledger
    was opened (built-ins until then), and a running job's on top."""
    return _in_force


def put_in_force(policy: Redaction) -> None:
    global _in_force
    _in_force = policy


@contextlib.contextmanager
def enforced(policy: Redaction) -> Iterator[Redaction]:
    """`policy` in force for the block (a job's run), then the one before."""
    before = in_force()
    put_in_force(policy)
    try:
        yield policy
    finally:
        put_in_force(before)


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """The policy in force before the block is in force again after it."""
    before = in_force()
    try:
        yield
    finally:
        put_in_force(before)


def for_job(redaction: Redaction, sensitive_fields: Iterable[str]) -> Redaction:
    """A job's policy: the one in force, its own, and its sensitive fields."""
    return _for_job(in_force(), redaction, frozenset(sensitive_fields))


@functools.lru_cache(maxsize=64)
def _for_job(
    ledger_wide: Redaction, redaction: Redaction, sensitive_fields: frozenset[str]
) -> Redaction:
    return ledger_wide.merged(redaction).with_fields(sensitive_fields)


def shown(value: Any) -> Any:
    """The last guard on what the CLI and the API show of recorded text
    (events written before a policy named what they hold): the policy in
    force, with every built-in, through documents, views and texts."""
    compiled = _compiled(DEFAULT.merged(in_force()))
    try:
        return compiled.shown(value, frozenset())
    except RecursionError:
        return mark("too-deep")
