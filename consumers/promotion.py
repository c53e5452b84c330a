"""Promoting a consumer's quarantined message: its job's own code, again.

The message is fetched anew from where it was read, (topic, partition,
offset), by a plain consumer of no group (`assign` and `seek`, committed
records only), so that no group's offsets move. When retention or
compaction has taken it from the topic, its copy in the quarantine topic
stands in (the copy's `ledger.source.*` headers name the original), else
the whole message its quarantine event sealed (see
`consumers.sealed_message`); with none of them, or a sealed payload whose
key was destroyed, the promotion is refused.

The consumer job is opened with its run's context, and the message goes
through `handle` and `write` once, without the consumer's retries: a
`Reject` quarantines it again, any other exception is a failure and it
stays pending. Nothing here records anything: the caller records the
outcome (see `ledger.promotions`).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from consumers.job import ConsumerContext, ConsumerJob, Message
from consumers.sealed_message import message_from_whole, whole_message
from ledger.attempt import preview_payload
from ledger.effects import EffectRegistry, EffectsFor, EffectUncertain
from ledger.errors import InputError, LedgerError
from ledger.job import Reject
from ledger.keys import consumer_site
from ledger.loader import load_job
from ledger.messages import CONSUME_STEP
from ledger.promotion import PromotionRefused, effect_waits
from ledger.quarantine import (
    FAILED,
    REJECTED,
    WRITTEN,
    PromotionResult,
    Requarantine,
)
from ledger.redaction import enforced
from ledger.run import Run
from ledger.sealing import SealedPayloadError

if TYPE_CHECKING:
    from ledger.sealed_payloads import SealedPayloads
    from projections.quarantine import QuarantinedRecord
    from projections.views import RunView

__all__ = ["MessagePromotion", "fetch_message", "open_message_promotion"]

log = structlog.get_logger(__name__)

# How long reading a partition (or the quarantine topic) may take before
# the promotion gives up: the broker answers, but too slowly to wait on.
FETCH_SECONDS = 30.0

# The headers a copy in the quarantine topic carries besides the
# message's own (see consumers.quarantine_copy).
_COPY_HEADERS = frozenset(
    {
        "ledger.source.topic",
        "ledger.source.partition",
        "ledger.source.offset",
        "ledger.attempt",
        "ledger.tries",
        "ledger.error.class",
        "ledger.reason",
        "ledger.run",
    }
)


def open_message_promotion(
    view: RunView, bootstrap_servers: str | None, effects_for: EffectsFor
) -> MessagePromotion:
    """The consumer run's own job, of the version that made the run,
    opened with the run's context; the broker from `bootstrap_servers`,
    else KAFKA_BOOTSTRAP_SERVERS, else where the run consumed from."""
    job = load_job(view.job_ref, ConsumerJob)  # type: ignore[type-abstract]
    if job.version != view.job_version:
        raise LedgerError(
            f"run {view.run_id} was made by {view.job} {view.job_version}, but "
            f"{view.job_ref} is now {job.version}; restore that version of the "
            "job to promote its messages"
        )
    servers = (
        bootstrap_servers
        or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        or str(view.params.get("bootstrap_servers") or "")
    )
    if not servers:
        raise InputError(
            "--bootstrap-servers",
            f"run {view.run_id[:8]} does not say where its broker was",
            "pass --bootstrap-servers HOST:PORT",
        )
    stream = view.consumer or {}
    group = str(stream.get("group", job.group_id))
    registry = effects_for(
        job.effects, lambda step: consumer_site(job.name, group, step)
    )
    registry.at(CONSUME_STEP)
    context = ConsumerContext(
        run_id=UUID(view.run_id),
        group=group,
        member=str(stream.get("member", "")),
        params=dict(view.params),
        registry=registry,
    )
    try:
        job.open(context)
    except LedgerError:
        raise
    except Exception as error:
        raise InputError(
            job.name,
            f"could not open its output ({type(error).__name__}: {error})",
            "check the run's --param values and the files they name",
        ) from error
    return MessagePromotion(job, servers, registry)


class MessagePromotion:
    """A consumer job opened once, to promote its run's messages."""

    def __init__(
        self, job: ConsumerJob, bootstrap_servers: str, effects: EffectRegistry
    ) -> None:
        self.job = job
        self.bootstrap_servers = bootstrap_servers
        self.effects = effects

    def close(self) -> None:
        self.job.close()

    def promote(
        self,
        run: Run,
        record: QuarantinedRecord,
        payloads: SealedPayloads | None = None,
    ) -> PromotionResult:
        """The message fetched again (else opened from its sealed payload),
        then handled and written once."""
        topic, partition, offset = record.topic, record.partition, record.offset
        if topic is None or partition is None or offset is None:
            raise PromotionRefused(
                f"record {record.quarantine_id} does not name the topic, "
                "partition and offset it was read from; discard it"
            )
        copies = self.job.quarantine.topic_for(topic)
        message = asyncio.run(
            fetch_message(self.bootstrap_servers, topic, partition, offset, copies)
        )
        if message is None:
            where = (topic, partition, offset)
            message = _from_sealed(run, record, where, payloads, copies)
        try:
            with enforced(self.job.policy()):
                result = self._handle(message, record.batch)
        finally:
            self.effects.flush_quietly()
        log.info(
            "message.promoted",
            run_id=str(run.id),
            quarantine_id=record.quarantine_id,
            topic=topic,
            partition=partition,
            offset=offset,
            outcome=result.outcome,
        )
        return result

    def _handle(self, message: Message, batch: int) -> PromotionResult:
        counters: Counter[str] = Counter()
        self.effects.begin_record()
        try:
            output = self.job.handle(message, counters)
        except EffectUncertain as uncertain:
            raise effect_waits(uncertain) from None
        except Reject as rejection:
            return self._rejected(message, batch, rejection)
        except Exception as error:
            return PromotionResult(
                FAILED, CONSUME_STEP, 0, type(error).__name__, self._redact(error)
            )
        self.effects.begin_record()
        try:
            written = self.job.write([(message, output)])
        except Exception as error:
            return PromotionResult(
                FAILED, CONSUME_STEP, 0, type(error).__name__, self._redact(error)
            )
        return PromotionResult(WRITTEN, CONSUME_STEP, written)

    def _rejected(
        self, message: Message, batch: int, rejection: Reject
    ) -> PromotionResult:
        """Quarantined again, as the consumer would: where it was read."""
        again = Requarantine(
            step=CONSUME_STEP,
            batch=batch,
            record=message.offset,
            reason=rejection.reason,
            detail=self._redact(rejection.detail)[:500],
            payload=preview_payload(self.job.preview(message)),
            whole=whole_message(message),
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )
        return PromotionResult(
            REJECTED, CONSUME_STEP, 0, "Reject", self._redact(rejection), again
        )

    def _redact(self, text: object) -> str:
        """A text of the job's as it may be recorded."""
        return str(self.job.redact(str(text)))


def _from_sealed(
    run: Run,
    record: QuarantinedRecord,
    source: tuple[str, int, int],
    payloads: SealedPayloads | None,
    copies: str | None,
) -> Message:
    """The message its quarantine sealed; refused, naming why, without one."""
    topic, partition, offset = source
    where = f" nor in {copies}" if copies else ""
    gone = (
        f"message {topic}[{partition}]@{offset} is no longer in its topic "
        f"(retention or compaction removed it){where}"
    )
    fix = (
        f"discard it (`ledger quarantine discard {record.quarantine_id[:8]} "
        "--reason TEXT`)"
    )
    try:
        unsealed = payloads.open(run, record.quarantine_id) if payloads else None
    except SealedPayloadError as unreadable:
        raise PromotionRefused(
            f"{gone}, and its sealed payload cannot be opened: {unreadable.why}; {fix}"
        ) from None
    if unsealed is None:
        raise PromotionRefused(f"{gone}; {fix}")
    return message_from_whole(unsealed.payload, topic, partition, offset)


async def fetch_message(
    bootstrap_servers: str,
    topic: str,
    partition: int,
    offset: int,
    copies: str | None,
) -> Message | None:
    """The message at (topic, partition, offset), else its copy in the
    `copies` topic, else None."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    try:
        await consumer.start()
    except KafkaError as error:
        await consumer.stop()
        raise LedgerError(
            f"Kafka at {bootstrap_servers} did not answer ({type(error).__name__}); "
            "start the broker or pass the right --bootstrap-servers"
        ) from error
    try:
        topics = await consumer.topics()
        if topic in topics:
            found = await _from_source(consumer, topic, partition, offset)
            if found is not None:
                return found
        if copies is not None and copies in topics:
            return await _from_copies(consumer, copies, topic, partition, offset)
        return None
    except KafkaError as error:
        raise LedgerError(
            f"Kafka at {bootstrap_servers} failed while the message was fetched "
            f"({type(error).__name__}: {error}); promote it again once the "
            "broker answers"
        ) from error
    finally:
        await consumer.stop()


async def _from_source(
    consumer: AIOKafkaConsumer, topic: str, partition: int, offset: int
) -> Message | None:
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    first = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    if not first <= offset < end:
        return None
    consumer.seek(tp, offset)

    # The first record at or past the offset: past it means the log skips
    # it (a transaction marker, or compaction took it).
    found = await _scan(consumer, {tp: end}, lambda r: r.offset >= offset)
    if found is None or found.offset != offset:
        return None
    return _message(found, topic, partition, offset, strip=frozenset())


async def _from_copies(
    consumer: AIOKafkaConsumer, copies: str, topic: str, partition: int, offset: int
) -> Message | None:
    # The client learns a topic's partitions once it reads from it, and
    # every topic has a partition 0.
    consumer.assign([TopicPartition(copies, 0)])
    await consumer.beginning_offsets([TopicPartition(copies, 0)])
    partitions = consumer.partitions_for_topic(copies) or {0}
    tps = [TopicPartition(copies, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    wanted = {
        "ledger.source.topic": topic.encode(),
        "ledger.source.partition": str(partition).encode(),
        "ledger.source.offset": str(offset).encode(),
    }

    def is_copy(record: Any) -> bool:
        headers = dict(record.headers or ())
        return all(headers.get(name) == value for name, value in wanted.items())

    found = await _scan(consumer, ends, is_copy)
    if found is None:
        return None
    return _message(found, topic, partition, offset, strip=_COPY_HEADERS)


async def _scan(
    consumer: AIOKafkaConsumer,
    ends: dict[TopicPartition, int],
    match: Callable[[Any], bool],
) -> Any | None:
    """The first record that matches, reading each partition to `ends`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FETCH_SECONDS
    while True:
        fetched = await consumer.getmany(timeout_ms=500)
        for records in fetched.values():
            for record in records:
                if match(record):
                    return record
        positions = [await consumer.position(tp) for tp in ends]
        if all(at >= ends[tp] for tp, at in zip(ends, positions, strict=True)):
            return None
        if loop.time() > deadline:
            raise LedgerError(
                f"reading {', '.join(sorted({tp.topic for tp in ends}))} took "
                f"over {FETCH_SECONDS:.0f} s; check the broker, then promote again"
            )


def _message(
    record: Any, topic: str, partition: int, offset: int, *, strip: frozenset[str]
) -> Message:
    """A handler's message, named by where it was first read."""
    headers = tuple((k, v) for k, v in (record.headers or ()) if k not in strip)
    return Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=record.key,
        value=record.value,
        headers=headers,
        timestamp=record.timestamp,
    )
