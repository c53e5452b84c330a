"""A Kafka sink whose outputs a replay never duplicates downstream.

A consumer job's `write` may run twice for the same messages: a batch
whose checkpoint did not commit is handled and written again, by this
member or by the partition's next owner. Kafka cannot take a message
back, so a replayed batch is in the output topic twice. The sink makes
that harmless: every output carries its idempotency key, and a reader
that keeps the first message per key sees each output once.

What the sink guarantees (the keyed option):

- every output of a checkpointed batch is in the topic at least once: its
  messages are sent with an idempotent producer (`acks=all`) and `send`
  returns only when the broker acknowledged every one of them, so the
  ledger's checkpoint, which comes after `write`, never names a batch whose
  outputs are not all in the topic;
- every copy of an output carries the same `idempotency-key` header: the
  key of the job's declared effect for the input message (and `part`), the
  same whichever member of the group handles the message, on every attempt
  (`ledger.keys`); two different outputs never share a key;
- both copies land in the same partition (same Kafka key, Kafka's default
  partitioner, as long as the topic's partition count does not change),
  so one reader of that partition sees both, the first copy first;
- nothing more: a reader that does not dedupe sees the outputs of a
  replayed batch twice, and may see a batch's outputs before the batch is
  checkpointed. The idempotent producer drops only its own retries of a
  send; a replay is a new send, and is not dropped.

The Kafka key stays the job's own (by default, the input message's key):
Kafka partitions by key, so an entity's outputs stay in one partition, in
order, and compaction keeps working by entity. An output with no key of
its own is keyed by its idempotency key, since a keyless message goes to
any partition and its two copies could then part ways.

Why not the transactional option (a transactional producer that sends the
batch's consumer offsets in the same Kafka transaction, with the ledger's
checkpoint naming the transaction). Here the ledger, not Kafka, is the
source of truth for where a partition resumes. A process that dies after
the Kafka transaction commits and before the ledger's checkpoint commits
is resumed from the ledger's older position: the batch is handled again
and produced again, in a new transaction that commits too, and
`read_committed` readers see it twice. What transactions would add is
that those readers never see part of a batch whose sending was cut short;
readers would still dedupe by key, and fencing a zombie producer needs a
transactional id per input partition (aiokafka's
`send_offsets_to_transaction` takes only the group id, not the consumer's
generation). The keyed option gives a deduping reader the same end result
with one producer and no transaction per batch; it is not built.

The sink records no effect in the ledger per message (`context.effect`
would cost one ledger transaction per message before its send): the
batch's checkpoint is the record that its outputs were acknowledged.

The consumer calls `write` on a worker thread of its own, not on the event
loop, and aiokafka's producer is asynchronous: the sink runs its producer
on an event loop in a thread the sink owns, and `send` waits for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumers.job import ConsumerContext, Message
from ledger.errors import LedgerError

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "FirstPerKey",
    "HasHeaders",
    "KafkaOutput",
    "KafkaSink",
    "SinkError",
    "first_per_key",
    "idempotency_key_of",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

# The header every output carries; readers dedupe by its value.
IDEMPOTENCY_KEY_HEADER = "idempotency-key"


class SinkError(LedgerError):
    """The sink could not start, or could not get a batch acknowledged.

    A batch whose `write` raised is not checkpointed: it is handled and sent
    again, with the same keys, once the cause is fixed.
    """

    def __init__(self, topic: str, problem: str, fix: str) -> None:
        super().__init__(f"Kafka sink to {topic}: {problem}; {fix}")
        self.topic = topic
        self.problem = problem


@dataclass(frozen=True)
class KafkaOutput:
    """One message to produce for one input message.

    `key` is the Kafka key, for partitioning; None uses the idempotency
    key. `part` tells apart several outputs of one input message: each
    gets a key of its own.
    """

    source: Message
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    part: str = ""


class KafkaSink:
    """Produces a consumer job's outputs to one topic, replay-safe.

    Open it in the job's `open(context)`, call `send` from `write`, and
    `close` it in `close`. `effect` names the job's declared effect (an
    `EffectPolicy(honours_keys=True)`: readers of the topic dedupe by key).
    The broker is the run's (`--bootstrap-servers`) unless given.
    """

    def __init__(
        self,
        context: ConsumerContext,
        *,
        topic: str,
        effect: str,
        bootstrap_servers: str | None = None,
        timeout_seconds: float = 120.0,
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        self.context = context
        self.topic = topic
        self.effect = effect
        self.timeout_seconds = timeout_seconds
        _check_effect(context, topic, effect)
        servers = bootstrap_servers or str(
            context.params.get("bootstrap_servers") or ""
        )
        if not servers:
            raise SinkError(
                topic,
                "no broker to send to",
                "pass bootstrap_servers, or run the job with `ledger consume "
                "--bootstrap-servers HOST:PORT`",
            )
        # The job's options may not turn idempotence or full acks off.
        options = {
            **(producer_options or {}),
            "bootstrap_servers": servers,
            # Retries inside this process are dropped by the broker; acks
            # from every in-sync replica before a batch counts as sent.
            "enable_idempotence": True,
            "acks": "all",
        }
        self._closed = False
        self._loop = _LoopThread(f"kafka-sink-{topic}")
        try:
            self._producer = self._loop.run(_started(options), timeout_seconds)
        except Exception as error:
            self._loop.close()
            raise SinkError(
                topic,
                f"the producer could not start ({_describe(error)})",
                f"check that a broker answers at {servers}",
            ) from error
        log.info("sink.started", topic=topic, effect=effect)

    def send(self, outputs: Iterable[KafkaOutput]) -> int:
        """Produces the outputs and returns once the broker acknowledged
        every one; returns how many. Raises SinkError otherwise: the batch
        is then not checkpointed, and is sent again on replay."""
        records = self._prepared(outputs)
        if not records:
            return 0
        try:
            self._loop.run(self._produce(records), self.timeout_seconds)
        except FutureTimeout:
            raise SinkError(
                self.topic,
                f"{len(records)} messages not acknowledged within "
                f"{self.timeout_seconds:g} s; some may be in the topic",
                "check the broker; the batch is sent again, with the same keys, "
                "when the consumer restarts",
            ) from None
        except KafkaError as error:
            raise SinkError(
                self.topic,
                f"the broker refused the batch ({_describe(error)})",
                "fix the cause (topic, sizes, permissions); the batch is sent "
                "again, with the same keys, when the consumer restarts",
            ) from error
        log.debug("sink.sent", topic=self.topic, messages=len(records))
        return len(records)

    def close(self) -> None:
        """Sends what is still buffered and stops the producer's thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._producer.stop(), self.timeout_seconds)
        except (FutureTimeout, KafkaError) as error:
            log.warning("sink.close_failed", topic=self.topic, error=_describe(error))
        finally:
            self._loop.close()

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _prepared(self, outputs: Iterable[KafkaOutput]) -> list[_Record]:
        """Each output with its key and headers; refuses two outputs of one
        batch with the same key, which a reader would take for one."""
        records: list[_Record] = []
        seen: set[str] = set()
        for output in outputs:
            source = output.source
            key = self.context.key(self.effect, source, output.part)
            if key in seen:
                raise SinkError(
                    self.topic,
                    f"two outputs of {source.topic}[{source.partition}] offset "
                    f"{source.offset} have the same part {output.part!r}",
                    "give each output of one message its own `part`",
                )
            if any(name == IDEMPOTENCY_KEY_HEADER for name, _ in output.headers):
                raise SinkError(
                    self.topic,
                    f"an output already carries a {IDEMPOTENCY_KEY_HEADER} header",
                    "leave that header to the sink, or rename yours",
                )
            seen.add(key)

            # Where the output came from, named as the quarantine copies do.
            headers = [
                *output.headers,
                (IDEMPOTENCY_KEY_HEADER, key.encode()),
                ("ledger.source.topic", source.topic.encode()),
                ("ledger.source.partition", str(source.partition).encode()),
                ("ledger.source.offset", str(source.offset).encode()),
            ]
            kafka_key = key.encode() if output.key is None else output.key
            records.append(_Record(kafka_key, output.value, headers))
        return records

    async def _produce(self, records: list[_Record]) -> None:
        # Everything queued is awaited, even when a later send is refused,
        # so that no message of the batch is still in flight on return.
        queued: list[asyncio.Future[Any]] = []
        refused: BaseException | None = None
        for record in records:
            try:
                queued.append(
                    await self._producer.send(
                        self.topic,
                        value=record.value,
                        key=record.key,
                        headers=record.headers,
                    )
                )
            except KafkaError as error:
                refused = error
                break
        results = await asyncio.gather(*queued, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if refused is not None:
            raise refused
        if failed:
            raise failed[0]


@dataclass(frozen=True)
class _Record:
    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]]


async def _started(options: dict[str, Any]) -> AIOKafkaProducer:
    # aiokafka binds a producer to the loop it is made on: this one.
    producer = AIOKafkaProducer(**options)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


class _LoopThread:
    """An event loop running in a daemon thread of its own."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=name, daemon=True
        )
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """The coroutine's result; cancels it after `timeout` seconds."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


def _check_effect(context: ConsumerContext, topic: str, effect: str) -> None:
    """The effect is declared, and declares readers that dedupe by key."""
    registry = context.registry
    if registry is None:
        raise SinkError(
            topic,
            "the context has no effect registry",
            "open the sink in the job's open(context), from a run the ledger runs",
        )
    policy = registry.declared.get(effect)
    if policy is None or not policy.honours_keys:
        raise SinkError(
            topic,
            f"effect {effect!r} is not declared with honours_keys=True",
            f'add "{effect}": EffectPolicy(honours_keys=True) to the job\'s '
            "`effects`, and have the topic's readers dedupe by the "
            f"{IDEMPOTENCY_KEY_HEADER} header (consumers.sink.FirstPerKey)",
        )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# Reading the sink's topic.


class HasHeaders(Protocol):
    """Anything with Kafka headers: aiokafka's ConsumerRecord, a Message."""

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


_R = TypeVar("_R", bound=HasHeaders)


def idempotency_key_of(record: HasHeaders) -> str | None:
    """The record's idempotency key, or None when it has none."""
    for name, value in record.headers:
        if name == IDEMPOTENCY_KEY_HEADER:
            return value.decode()
    return None


class FirstPerKey:
    """A reader's dedupe: admits the first record of each idempotency key.

    Feed it the sink's topic in the order read. The copies of one output
    share a partition, the first copy first, so a reader of that partition
    keeps the first. A record without the header is not the sink's, and is
    always admitted.

    The keys seen are kept in memory. A downstream that must survive its
    own restarts keeps them with its output instead (a unique constraint on
    the key column, written in the same transaction as the output).
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.dropped = 0

    def admit(self, record: HasHeaders) -> bool:
        """Whether the record is the first of its key (and so to be used)."""
        key = idempotency_key_of(record)
        if key is None:
            return True
        if key in self.seen:
            self.dropped += 1
            return False
        self.seen.add(key)
        return True


def first_per_key(records: Iterable[_R]) -> list[_R]:
    """The records, in order, without the repeats of an idempotency key."""
    dedupe = FirstPerKey()
    return [record for record in records if dedupe.admit(record)]
