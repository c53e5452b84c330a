"""Copies of quarantined messages in the quarantine topic.

The ledger's `MessageQuarantined` event is the record; the copy lets the
owners of the source topic see and replay what was set aside with their
own tools. Its headers say where each message came from and why it failed.
"""

from __future__ import annotations

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumers.batch import Handled
from consumers.job import ConsumerJob
from consumers.recorder import ConsumerRecorder
from ledger.messages import partition_key

__all__ = ["copy_to_quarantine"]

log = structlog.get_logger(__name__)


async def copy_to_quarantine(
    producer: AIOKafkaProducer | None,
    job: ConsumerJob,
    handled: Handled,
    recorder: ConsumerRecorder,
) -> dict[tuple[str, int], str | None]:
    """Copies the batch's quarantined messages; returns, per (partition,
    offset), the topic each was copied to, or None."""
    copies: dict[tuple[str, int], str | None] = {}
    for item in handled.poison:
        message = item.message
        key = (partition_key(message.topic, message.partition), message.offset)
        target = job.quarantine.topic_for(message.topic)
        if target is None or producer is None:
            copies[key] = None
            continue
        headers = [
            *message.headers,
            ("ledger.source.topic", message.topic.encode()),
            ("ledger.source.partition", str(message.partition).encode()),
            ("ledger.source.offset", str(message.offset).encode()),
            ("ledger.attempt", str(recorder.attempt).encode()),
            ("ledger.tries", str(item.tries).encode()),
            ("ledger.error.class", item.error_class.encode()),
            ("ledger.reason", item.reason.encode()),
            ("ledger.run", str(recorder.current.id).encode()),
        ]

        # A message Kafka will not take again (too large with these headers,
        # neither key nor value) must not hold its partition: it stays in
        # quarantine in the ledger, and its detail says the copy failed.
        try:
            await producer.send_and_wait(
                target, value=message.value, key=message.key, headers=headers
            )
        except (KafkaError, AssertionError, ValueError) as error:
            log.warning(
                "quarantine.copy_failed",
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                target=target,
                error=type(error).__name__,
            )
            copies[key] = None
            item.notes.append(f"copy to {target} failed: {type(error).__name__}")
            continue
        copies[key] = target
    return copies
