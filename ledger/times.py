"""Moments people type: ISO 8601 times and ages such as `2h` or `3d`.

The ledger records every time in UTC, and shows times in UTC; a time typed
without an offset is read as UTC too, so what a person copies from the
ledger's output means the same moment when typed back.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ledger.errors import LedgerError

__all__ = ["BadTime", "parse_moment"]

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class BadTime(LedgerError):
    """A time that is neither ISO 8601 nor an age."""

    def __init__(self, label: str, text: str) -> None:
        super().__init__(
            f"{label} '{text}' is not a time: give ISO 8601 (2026-12-04, "
            "2026-12-04T10:30, UTC unless an offset is given) or an age such "
            "as 30m, 2h, 3d or 1w"
        )
        self.label = label
        self.text = text


def parse_moment(text: str, *, label: str, now: datetime | None = None) -> datetime:
    """The moment `text` names, in UTC; an age counts back from `now`."""
    age = _AGE.match(text)
    if age is not None:
        seconds = int(age.group(1)) * _UNIT_SECONDS[age.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)

    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadTime(label, text) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
