"""The API's parameters, checked before they reach the ledger.

PostgreSQL refuses text with a NUL character, and no driver can encode a
lone surrogate (JSON's `"\\ud800"`); either would fail deep in a query, so
both are refused here with 422. A run reference is not checked beyond its
length: the ledger's own lookup answers junk with the CLI's message.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import AfterValidator

__all__ = [
    "MAX_LIMIT",
    "MAX_REASON",
    "EffectParam",
    "EffectStateParam",
    "JobParam",
    "LimitParam",
    "RunParam",
    "RunQuery",
    "StateParam",
    "reason",
]

MAX_LIMIT = 10_000

# A run id with dashes is 36 characters; anything far longer is not one.
_MAX_REF = 100

_MAX_JOB = 200

# Recorded in the run's stream (see `ledger.controls.abandon`).
MAX_REASON = 500


def _encodable(text: str) -> str:
    if "\x00" in text:
        raise ValueError("holds a NUL character; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (a lone surrogate)") from None
    return text


def _optional_encodable(text: str | None) -> str | None:
    return None if text is None else _encodable(text)


def reason(text: str) -> str:
    """A reason is one line of plain text, recorded as given (trimmed)."""
    _encodable(text)
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise ValueError("must be one line of text without control characters")
    text = text.strip()
    if not text:
        raise ValueError("give a reason saying why (it is recorded with the decision)")
    if len(text) > MAX_REASON:
        raise ValueError(f"is longer than {MAX_REASON} characters; shorten it")
    return text


RunParam = Annotated[
    str,
    Path(
        min_length=1,
        max_length=_MAX_REF,
        description="A run id (with or without dashes) or a unique prefix of "
        "at least 4 of its characters.",
    ),
]

JobParam = Annotated[
    str | None,
    Query(max_length=_MAX_JOB, description="Only this job's runs."),
    AfterValidator(_optional_encodable),
]

RunQuery = Annotated[
    str | None,
    Query(
        max_length=_MAX_REF,
        description="Only this run's records: an id or a unique prefix.",
    ),
]

StateParam = Annotated[
    Literal["pending", "discarded", "promoted", "all"],
    Query(
        description="Only records in this state: waiting for a decision "
        "(`pending`), or decided; `all` for any."
    ),
]

EffectParam = Annotated[
    str,
    Path(
        min_length=1,
        max_length=_MAX_REF,
        description="An effect's idempotency key (with or without dashes) or "
        "a unique prefix of at least 4 of its characters.",
    ),
]

EffectStateParam = Annotated[
    Literal["intended", "completed", "failed", "uncertain", "released"] | None,
    Query(
        description="Only effects in this state; `uncertain` ones wait for an "
        "operator's decision."
    ),
]

LimitParam = Annotated[
    int,
    Query(ge=1, le=MAX_LIMIT, description="Return at most this many records."),
]
