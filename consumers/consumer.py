"""The consumer loop: aiokafka on one side, the ledger on the other.

The ledger is the source of truth for where a partition resumes; Kafka's
committed offset follows it. Per batch, in this order:

1. the batch is fetched, bounded by count and time;
2. `MessagesStarted` is recorded with the offsets it holds;
3. every message is handled, in offset order within its partition;
4. the job writes the outputs, replay-safe;
5. quarantined messages are copied to their quarantine topic;
6. one ledger transaction records the quarantined messages, the batch's
   checkpoint and the next offset to read of each partition it covers;
7. only then are those offsets committed to Kafka, with metadata naming
   the checkpoint.

A crash before 6 leaves the batch to be handled again (4 and 5 make that
harmless); a crash between 6 and 7 leaves Kafka behind the ledger, which
the next owner notices, reports and repairs on assignment.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from consumers.batch import Handled, handle_batch, split_suspects
from consumers.job import ConsumerJob, Message
from consumers.recorder import Checkpointed, ConsumerRecorder
from ledger import faults
from ledger.errors import JobFailed, LedgerError, LedgerUnavailable, Superseded
from ledger.messages import CONSUME_STEP, partition_key

__all__ = ["ConsumerSummary", "LedgerConsumer", "choose_start"]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

# How long a revoked partition's in-flight batch may take to checkpoint
# before the consumer lets the group move on without it. A later
# checkpoint of that work is refused by the ledger if the new owner got
# there first.
REVOKE_TIMEOUT_S = 10.0


@dataclass
class ConsumerSummary:
    """What one `ledger consume` process did."""

    run_id: str
    attempt: int
    messages: int = 0
    batches: int = 0
    quarantined: int = 0
    superseded: int = 0
    divergences: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    first_message_after: float | None = None


def choose_start(
    ledger_position: int | None, kafka_position: int | None
) -> tuple[int, str, str] | None:
    """Where a partition resumes, who said so, and how the other compared.

    The ledger decides; Kafka's committed offset is only compared with it:
    `behind` means the process died between the ledger's transaction and
    Kafka's commit, `ahead` that the group was moved outside the ledger.
    With no ledger position, Kafka's committed offset is used; with
    neither, None: the job's reset policy decides.
    """
    if ledger_position is not None:
        if kafka_position is None or kafka_position < ledger_position:
            return ledger_position, "ledger", "behind"
        if kafka_position > ledger_position:
            return ledger_position, "ledger", "ahead"
        return ledger_position, "ledger", "none"
    if kafka_position is not None:
        return kafka_position, "kafka", "none"
    return None


def _tp_key(tp: TopicPartition) -> str:
    return partition_key(tp.topic, tp.partition)


class PositionPastLogEnd(LedgerError):
    """A partition's recorded position is past the end of its log."""

    def __init__(self, partition: str, position: int, end: int) -> None:
        super().__init__(
            f"{partition}: the ledger's position {position:,} is past the end of "
            f"the partition's log ({end:,}): the topic was deleted and made "
            "again, or truncated; positions never move back, so consume the "
            "new topic with a new group_id"
        )
        self.partition = partition
        self.position = position
        self.end = end


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: LedgerConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.owner._on_assigned(list(assigned))


class LedgerConsumer:
    """One consumer process of a consumer job's group."""

    def __init__(
        self,
        recorder: ConsumerRecorder,
        job: ConsumerJob,
        *,
        bootstrap_servers: str,
        until_idle: float | None = None,
        kafka_options: dict[str, Any] | None = None,
    ) -> None:
        self.recorder = recorder
        self.job = job
        self.bootstrap_servers = bootstrap_servers
        self.until_idle = until_idle
        self.kafka_options = kafka_options or {}
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._revoking: set[str] = set()

        # The next offset to handle of each partition this consumer has
        # positioned. aiokafka may hand out records fetched before the
        # assignment callback sought the partition to the ledger's
        # position; those are dropped, never handled.
        self._next: dict[str, int] = {}
        self._buffer: dict[str, collections.deque[Message]] = {}

        # An assignment the consumer must not go on from; the loop raises it.
        self._fatal: LedgerError | None = None

        # For --until-idle: a rebalance is activity, and a member that was
        # never given a partition is not idle but waiting.
        self._last_rebalance = time.monotonic()
        self._assigned_once = False
        self._started = time.monotonic()
        self.summary = ConsumerSummary(run_id="", attempt=0)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

        # The job's hooks and the ledger calls all run on one thread of
        # their own: off the event loop, so heartbeats go on during a long
        # batch, and always the same thread, so their connections may be
        # thread-bound (SQLite's are).
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="ledger-consumer")

    async def _call(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._worker, functools.partial(function, *args, **kwargs)
        )

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None
        return self._consumer

    def stop(self) -> None:
        """Asks the loop to stop at the next batch boundary."""
        self._stop.set()

    async def run(self) -> ConsumerSummary:
        """Consumes until stopped (or idle); records why it stopped."""
        try:
            return await self._run()
        finally:
            self._worker.shutdown(wait=False)

    async def _run(self) -> ConsumerSummary:
        recorder = self.recorder

        # Kafka first: a broker that does not answer is bad input, and
        # nothing is recorded for it.
        await self._start_clients()
        try:
            await self._call(recorder.claim)
        except BaseException:
            await self._close_clients()
            raise
        self.summary.run_id = str(recorder.current.id)
        self.summary.attempt = recorder.attempt
        self._install_signals()
        try:
            await self._call(self.job.open, recorder.context())
            self.consumer.subscribe(list(self.job.topics), listener=_Rebalance(self))
            await self._consume_loop()
        except (Superseded, LedgerUnavailable):
            # Nothing more may be recorded by this worker.
            await self._close_clients()
            raise
        except BaseException as error:
            await self._close_clients()
            await self._call(self._close_job)
            what = f"{type(error).__name__}: {error}" if str(error) else repr(error)
            await self._call(recorder.fail, type(error).__name__, what)
            raise JobFailed(
                self.summary.run_id,
                f"consumer run {self.summary.run_id} failed: {what}; once fixed, "
                f"the same `ledger consume` with --member {recorder.member} resumes "
                "from the ledger's positions",
            ) from error

        # A clean stop: the group is left first, so that no partition is
        # still ours when the run is recorded as ended.
        await self._close_clients()
        await self._call(self._close_job)
        await self._call(recorder.complete)
        self.summary.elapsed = time.monotonic() - self._started
        return self.summary

    def _close_job(self) -> None:
        try:
            self.job.close()
        except Exception as error:
            log.warning("job.close_failed", error=f"{type(error).__name__}: {error}")

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self.stop)
            except (NotImplementedError, RuntimeError, ValueError):
                # Not the main thread: the host owns signals.
                return

    async def _start_clients(self) -> None:
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": self.job.group_id,
            "client_id": f"ledger-{self.recorder.member}",
            # Static membership: a member restarted after a crash takes its
            # own place back at once, instead of waiting out the dead
            # process's session before the group rebalances.
            "group_instance_id": self.recorder.member,
            "enable_auto_commit": False,
            # Records of aborted or open transactions are never handled.
            "isolation_level": "read_committed",
            "auto_offset_reset": self.job.auto_offset_reset,
            **self.kafka_options,
        }
        try:
            self._consumer = AIOKafkaConsumer(**options)
            await self._consumer.start()
            if self.job.quarantine.topic_suffix:
                self._producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap_servers,
                    acks="all",
                    enable_idempotence=True,
                )
                await self._producer.start()
        except KafkaError as error:
            await self._close_clients()
            raise LedgerError(
                f"Kafka at {self.bootstrap_servers} did not answer "
                f"({type(error).__name__}); start the broker (scripts/kafka.sh "
                "prints its address) or pass the right --bootstrap-servers"
            ) from error

    async def _close_clients(self) -> None:
        self._stop.set()
        if self._consumer is not None:
            try:
                await self._consumer.stop()
            except KafkaError as error:
                log.warning("consumer.stop_failed", error=str(error))
        if self._producer is not None:
            await self._producer.stop()

    # The loop.

    async def _consume_loop(self) -> None:
        idle_since = time.monotonic()
        while not self._stop.is_set():
            if self._fatal is not None:
                raise self._fatal
            batch = await self._fetch()
            if self._fatal is not None:
                raise self._fatal
            if batch:
                async with self._lock:
                    await self._work(batch)
                idle_since = time.monotonic()
            elif self.until_idle is not None:
                idle_for = time.monotonic() - max(idle_since, self._last_rebalance)
                if idle_for >= self.until_idle and await self._caught_up():
                    log.info("consumer.idle", idle_seconds=round(idle_for, 1))
                    return

    async def _fetch(self) -> dict[str, list[Message]]:
        """A batch: up to `batch_max_records` messages, or what came within
        `batch_max_seconds` of the first one."""
        limit = self.job.batch_max_records
        deadline = (
            time.monotonic() + self.job.batch_max_seconds if self._buffered() else None
        )
        while self._buffered() < limit and not self._stop.is_set():
            wait = self.job.batch_max_seconds
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
            fetched = await self.consumer.getmany(timeout_ms=int(wait * 1000))
            self._accept(fetched)
            if deadline is None:
                if not self._buffered():
                    return {}
                deadline = time.monotonic() + self.job.batch_max_seconds
        return self._take(limit)

    def _buffered(self) -> int:
        return sum(len(messages) for messages in self._buffer.values())

    def _accept(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        """Buffers fetched records of the partitions this consumer has
        positioned, from the next offset it expects on."""
        for tp, records in fetched.items():
            key = _tp_key(tp)
            expected = self._next.get(key)
            if expected is None:
                continue
            messages = [
                Message(
                    topic=r.topic,
                    partition=r.partition,
                    offset=r.offset,
                    key=r.key,
                    value=r.value,
                    headers=tuple(r.headers or ()),
                    timestamp=r.timestamp,
                )
                for r in records
                if r.offset >= expected
            ]
            if messages:
                self._buffer.setdefault(key, collections.deque()).extend(messages)
                self._next[key] = messages[-1].offset + 1

    def _take(self, limit: int) -> dict[str, list[Message]]:
        """Up to `limit` buffered messages, taken from every partition in
        turn: aiokafka hands out one partition's records first, which would
        leave the others waiting while the first has any."""
        batch: dict[str, list[Message]] = {}
        taken = 0
        while taken < limit and self._buffered():
            for key in sorted(self._buffer):
                queue = self._buffer[key]
                if queue and taken < limit:
                    batch.setdefault(key, []).append(queue.popleft())
                    taken += 1
        return batch

    def _forget(self, key: str) -> None:
        """Drops what was fetched for a partition that moved or was sought."""
        self._buffer.pop(key, None)

    async def _caught_up(self) -> bool:
        assigned = list(self.consumer.assignment())

        # With nothing assigned yet, the group may still be forming: only a
        # member that had partitions and lost them all is done.
        if not assigned:
            return self._assigned_once
        ends = await self.consumer.end_offsets(assigned)
        for tp in assigned:
            if await self.consumer.position(tp) < ends[tp]:
                return False
        return True

    async def _work(self, batch: dict[str, list[Message]]) -> None:
        recorder = self.recorder
        parts = list(split_suspects(recorder.current, batch))
        for index, part in enumerate(parts):
            later = {key for rest in parts[index + 1 :] for key in rest}
            part = {k: v for k, v in part.items() if k not in self._revoking}
            if not part:
                continue
            ranges = [
                {"partition": key, "first": msgs[0].offset, "last": msgs[-1].offset}
                for key, msgs in sorted(part.items())
            ]
            number = await self._call(recorder.start_batch, ranges)
            faults.enter_batch(CONSUME_STEP, number)
            handled = await self._call(
                handle_batch,
                self.job,
                recorder.current,
                part,
                stopped=self._revoking.__contains__,
            )
            if self.summary.first_message_after is None and handled.done:
                self.summary.first_message_after = time.monotonic() - self._started
            faults.hit("in_batch")
            written = await self._call(self.job.write, handled.outputs)
            faults.hit("after_write")
            copies = await self._copy_poison(handled)
            highwaters = {
                _tp_key(tp): self.consumer.highwater(tp)
                for tp in self.consumer.assignment()
            }
            read_past = await self._read_past(part, handled, later)
            result = await self._call(
                recorder.checkpoint,
                number,
                handled,
                written,
                copies,
                highwaters,
                read_past,
            )
            faults.hit("after_checkpoint")
            await self._after_checkpoint(number, handled, result)

    async def _read_past(
        self, part: dict[str, list[Message]], handled: Handled, later: set[str]
    ) -> dict[str, int]:
        """The client's position of each partition this batch read to the
        end of what was fetched; it is past the last message when the log
        skips offsets there. `later` names partitions with messages still
        to handle in this batch: their position is not reached yet."""
        found: dict[str, int] = {}
        assigned = {_tp_key(tp): tp for tp in self.consumer.assignment()}
        for key, messages in part.items():
            done = handled.done.get(key)
            if done is None or done[1] != messages[-1].offset:
                continue
            if key in later or self._buffer.get(key) or key not in assigned:
                continue
            try:
                found[key] = await self.consumer.position(assigned[key])
            except KafkaError:
                continue
            self._next[key] = max(self._next.get(key, 0), found[key])
        return found

    async def _copy_poison(self, handled: Handled) -> dict[tuple[str, int], str | None]:
        """Copies quarantined messages to their quarantine topic, with
        headers that say where each came from and why it failed."""
        copies: dict[tuple[str, int], str | None] = {}
        for item in handled.poison:
            message = item.message
            key = (partition_key(message.topic, message.partition), message.offset)
            target = self.job.quarantine.topic_for(message.topic)
            if target is None or self._producer is None:
                copies[key] = None
                continue
            headers = [
                *message.headers,
                ("ledger.source.topic", message.topic.encode()),
                ("ledger.source.partition", str(message.partition).encode()),
                ("ledger.source.offset", str(message.offset).encode()),
                ("ledger.attempt", str(self.recorder.attempt).encode()),
                ("ledger.tries", str(item.tries).encode()),
                ("ledger.error.class", item.error_class.encode()),
                ("ledger.reason", item.reason.encode()),
                ("ledger.run", str(self.recorder.current.id).encode()),
            ]
            # The copy is a convenience; the ledger's event is the record.
            # A message Kafka will not take again (too large with our
            # headers, neither key nor value) must not hold its partition.
            try:
                await self._producer.send_and_wait(
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

    async def _after_checkpoint(
        self, number: int, handled: Handled, result: Checkpointed
    ) -> None:
        summary = self.summary
        summary.batches += 1
        summary.messages += sum(handled.counts.values())
        summary.quarantined += len(handled.poison)
        summary.superseded += len(result.superseded)

        # A refused partition resumes where its recorded position says.
        assigned = {_tp_key(tp): tp for tp in self.consumer.assignment()}
        for key, position in result.superseded.items():
            log.warning(
                "checkpoint.superseded",
                run_id=summary.run_id,
                batch=number,
                partition=key,
                recorded=position,
            )
            if key in assigned:
                self.consumer.seek(assigned[key], position)
                self._next[key] = position
                self._forget(key)
        await self._commit_kafka(number, result.accepted, assigned)

    async def _commit_kafka(
        self,
        number: int,
        positions: dict[str, int],
        assigned: dict[str, TopicPartition],
    ) -> None:
        metadata = f"ledger run {self.summary.run_id} batch {number}"
        offsets = {
            assigned[key]: OffsetAndMetadata(position, metadata)
            for key, position in positions.items()
            if key in assigned
        }
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as error:
            # The ledger holds the position; the next owner repairs Kafka.
            log.warning(
                "kafka.commit_failed",
                run_id=self.summary.run_id,
                batch=number,
                error=type(error).__name__,
            )

    # Rebalances.

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        self._last_rebalance = time.monotonic()
        keys = {_tp_key(tp) for tp in revoked}
        self._revoking |= keys
        for key in keys:
            self._next.pop(key, None)
            self._forget(key)
        if self._stop.is_set() or not keys:
            return

        # Let the batch in flight finish and checkpoint what it did in time.
        try:
            await asyncio.wait_for(self._lock.acquire(), REVOKE_TIMEOUT_S)
        except TimeoutError:
            log.warning("partitions.revoke_timeout", partitions=sorted(keys))
            return
        try:
            run = self.recorder.current
            items = [
                {"partition": key, "next": run.partitions.get(key)}
                for key in sorted(keys)
                if key in run.partitions
            ]
            if items:
                await self._call(self.recorder.record_revoked, items)
            log.info("partitions.revoked", partitions=sorted(keys))
        finally:
            self._lock.release()

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Seeks each partition to the ledger's position; reports how
        Kafka's committed offset compares."""
        self._last_rebalance = time.monotonic()
        self._revoking -= {_tp_key(tp) for tp in assigned}
        if not assigned:
            return
        self._assigned_once = True
        recorded = await self._call(self.recorder.positions)
        firsts = await self.consumer.beginning_offsets(assigned)
        ends = await self.consumer.end_offsets(assigned)
        items = []
        repair: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in sorted(assigned):
            item = await self._resume_partition(
                tp, recorded.get(_tp_key(tp)), firsts[tp], ends[tp]
            )
            items.append(item)
            if item["divergence"] == "past-end":
                continue
            if item["divergence"] != "none":
                self.summary.divergences.append(item)
                repair[tp] = OffsetAndMetadata(item["start"], "ledger position")
        if repair:
            try:
                await self.consumer.commit(repair)
            except KafkaError as error:
                log.warning("kafka.repair_failed", error=type(error).__name__)
        async with self._lock:
            await self._call(self.recorder.record_assigned, items)

    async def _resume_partition(
        self, tp: TopicPartition, ledger_position: int | None, first: int, end: int
    ) -> dict[str, Any]:
        key = _tp_key(tp)
        kafka_position = await self.consumer.committed(tp)

        chosen = choose_start(ledger_position, kafka_position)
        if chosen is None:
            reset = end if self.job.auto_offset_reset == "latest" else first
            chosen = (reset, "reset", "none")
        start, source, divergence = chosen

        # The log must still hold the position. Past its end, the topic was
        # deleted and made again (or truncated): resuming would skip the
        # new messages, and positions never move back, so stop and say so.
        if start > end:
            self._fatal = PositionPastLogEnd(key, start, end)
            log.error("partition.past_end", partition=key, position=start, end=end)
            return {
                "partition": key, "start": start, "source": source,
                "ledger": ledger_position, "kafka": kafka_position,
                "divergence": "past-end",
            }  # fmt: skip

        # Before its start, retention deleted messages no one read: they are
        # lost to every consumer; say so, and go on from what is left.
        if start < first:
            log.error("partition.truncated", partition=key, position=start, first=first)
            start, divergence = first, "truncated"
        self.consumer.seek(tp, start)
        self._next[key] = start
        self._forget(key)

        if divergence != "none":
            log.warning(
                "partition.diverged",
                partition=key,
                ledger=ledger_position,
                kafka=kafka_position,
                divergence=divergence,
            )
        log.info("partition.assigned", partition=key, start=start, source=source)
        return {
            "partition": key,
            "start": start,
            "source": source,
            "ledger": ledger_position,
            "kafka": kafka_position,
            "divergence": divergence,
        }
