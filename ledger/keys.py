"""Deterministic idempotency keys for effects.

A key names one effect of one record: the same record, in the same run,
step and input version, gets the same key on every attempt, in every
process, on every machine; any other record or effect gets another key.
A downstream that honours idempotency keys can therefore drop a call it
has already applied, however often a replay repeats it.

A key is a UUID (version 8, the RFC 9562 layout for hashes other than
SHA-1), so it fits wherever an API expects an idempotency key, and it is
also the id of the effect's stream in the ledger. It is the first 122 bits
of the SHA-256 of a canonical JSON encoding of its parts: a list, so that
no two different part lists encode to the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson

from ledger.errors import LedgerError

__all__ = [
    "KEY_SCHEME",
    "EffectSite",
    "KeyPartsUnreadable",
    "consumer_site",
    "file_site",
    "idempotency_key",
    "record_identity",
]

# Part of every key: a new scheme would give every effect a new key, so it
# changes only with a new major version of the ledger.
KEY_SCHEME = "recovery-ledger/effect-key/1"

# The RFC 9562 version and variant bits.
_VERSION_8 = 0x8 << 76
_VARIANT = 0x2 << 62
_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)


@dataclass(frozen=True)
class EffectSite:
    """Where an effect is made: the work it belongs to, and the step.

    `scope` names the work whose records are each handled once:

    - for a file job, the run and its input version (`file_site`): a new
      run of the same file is new work, with keys of its own;
    - for a consumer, the job and its consumer group (`consumer_site`),
      not the member's run: a partition moves between members, and the
      message must keep its key when another member replays it.
    """

    # Kept as separate items, each its own item of the hashed list: joined
    # into one string, job "a group b" of group "c" would be job "a" of
    # group "b group c".
    scope: tuple[str, ...]
    step: str


def file_site(run_id: UUID, input_sha256: str, step: str) -> EffectSite:
    return EffectSite(("run", str(run_id), input_sha256), step)


def consumer_site(job: str, group: str, step: str) -> EffectSite:
    return EffectSite(("consumer", job, group), step)


def idempotency_key(
    site: EffectSite,
    record: Sequence[str | int],
    effect: str,
    part: str = "",
) -> UUID:
    """The key of `effect` for `record` at `site`.

    `record` is the record's identity inside its step: `("record", number)`
    for a file job, `("message", topic, partition, offset)` for a consumer.
    `part` tells apart several effects of the same name for one record
    (the lines of one invoice).
    """
    parts = [
        KEY_SCHEME,
        list(site.scope),
        site.step,
        list(record),
        effect,
        part,
    ]
    try:
        encoded = orjson.dumps(parts)
    except TypeError as error:
        raise KeyPartsUnreadable(parts, error) from None
    digest = hashlib.sha256(encoded).digest()
    value = int.from_bytes(digest[:16], "big") & _CLEAR
    return UUID(int=value | _VERSION_8 | _VARIANT)


class KeyPartsUnreadable(LedgerError):
    """A key's parts that cannot be encoded: text that is not valid Unicode
    (a lone surrogate) or an integer beyond 64 bits."""

    def __init__(self, parts: list[Any], error: TypeError) -> None:
        super().__init__(
            f"an idempotency key cannot be made of {parts!r} ({error}); pass "
            "an effect name and part that are plain text, and numbers that fit "
            "in 64 bits"
        )


def record_identity(record: Any) -> tuple[str | int, ...]:
    """A record's identity inside its step: its number for a file job's
    record, its topic, partition and offset for a Kafka message."""
    topic = getattr(record, "topic", None)
    if topic is not None:
        return ("message", topic, int(record.partition), int(record.offset))
    return ("record", int(record.number))
