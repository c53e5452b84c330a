"""A quarantined message kept whole, sealed in its quarantine event.

`MessageQuarantined` holds a preview of the message for people and the
whole Kafka record, sealed (see `ledger.sealed_payloads`): key, value,
headers and timestamp, bytes in base64. A promotion whose message is gone
from its topic and from the quarantine topic is made from it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from consumers.batch import Poison
from consumers.job import Message
from ledger.messages import message_quarantine_id
from ledger.sealed_payloads import BatchSeals

if TYPE_CHECKING:
    from ledger.run import Run
    from ledger.store import Ledger

__all__ = ["message_from_whole", "poison_id", "seal_poison", "whole_message"]


def poison_id(group: str, item: Poison) -> str:
    """The quarantine id the message is recorded under."""
    message = item.message
    return message_quarantine_id(
        group, message.topic, message.partition, message.offset
    )


def seal_poison(
    ledger: Ledger, run: Run, group: str, poison: Sequence[Poison]
) -> BatchSeals:
    """A batch's quarantined messages, sealed whole, their keys stored."""
    wholes = {poison_id(group, item): whole_message(item.message) for item in poison}
    return BatchSeals(ledger, run, wholes)


def whole_message(message: Message) -> dict[str, Any]:
    """The Kafka record as JSON can hold it."""
    return {
        "key": _text(message.key),
        "value": _text(message.value),
        "headers": [[name, _text(value)] for name, value in message.headers],
        "timestamp": message.timestamp,
    }


def message_from_whole(
    whole: dict[str, Any], topic: str, partition: int, offset: int
) -> Message:
    """The message `whole_message` kept, named by where it was first read."""
    return Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=_bytes(whole["key"]),
        value=_bytes(whole["value"]),
        headers=tuple((name, _bytes(value) or b"") for name, value in whole["headers"]),
        timestamp=int(whole["timestamp"]),
    )


def _text(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)
