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

from consumers.assignment import PositionPastLogEnd, place_partition
from consumers.batch import Handled, handle_batch, split_suspects
from consumers.fetch import FetchBuffer
from consumers.job import ConsumerJob, Message
from consumers.quarantine_copy import copy_to_quarantine
from consumers.recorder import Checkpointed, ConsumerRecorder
from ledger import faults
from ledger.attempt import PAUSE_POLL_SECONDS
from ledger.controls import PausedAtBoundary
from ledger.errors import JobFailed, LedgerError, LedgerUnavailable, Superseded
from ledger.lease import Heartbeat
from ledger.messages import CONSUME_STEP, partition_key
from ledger.redaction import restored

__all__ = ["ConsumerSummary", "LedgerConsumer"]

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


def _tp_key(tp: TopicPartition) -> str:
    return partition_key(tp.topic, tp.partition)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: LedgerConsumer) -> None:
        self.owner = owner

    # aiokafka logs what a listener raises and carries on: a partition left
    # unpositioned would then sit idle for ever. The loop raises it instead.
    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        try:
            await self.owner._on_revoked(list(revoked))
        except Exception as error:
            self.owner._fail_from_listener(error)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        try:
            await self.owner._on_assigned(list(assigned))
        except Exception as error:
            self.owner._fail_from_listener(error)


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

        self._fetched = FetchBuffer()

        # An assignment the consumer must not go on from; the loop raises it.
        self._fatal: LedgerError | None = None

        # For --until-idle: a rebalance is activity.
        self._last_rebalance = time.monotonic()

        # Counts rebalances: a batch that outlived one must not trust the
        # client's positions, which a revoke (dropping what was fetched) or
        # a new assignment (seeking) made meaningless for it.
        self._generation = 0
        self._unrecorded_revokes: set[str] = set()

        # An operator's pause: looked for between batches, held by pausing
        # every assigned partition while the group membership lives on.
        self._paused = False
        self._next_pause_check = 0.0
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
        # The claim puts the ledger's and the job's policy in force for the
        # consumer's life; the process's own comes back afterwards.
        try:
            with restored():
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
        heartbeat = Heartbeat(recorder.ledger, recorder.current.id, recorder.attempt)
        recorder.effects.bind(
            recorder.attempt, f"attempt {recorder.attempt}", heartbeat.check
        )
        try:
            with heartbeat:
                await self._call(self.job.open, recorder.context())
                self.consumer.subscribe(
                    list(self.job.topics), listener=_Rebalance(self)
                )
                await self._consume_loop()
        except (Superseded, LedgerUnavailable):
            # Nothing more may be recorded by this worker.
            await self._close_clients()
            raise
        except BaseException as error:
            await self._close_clients()
            await self._call(self._close_job)
            what = f"{type(error).__name__}: {error}" if str(error) else repr(error)
            what = str(self.job.redact(what))
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
            if await self._pause_asked():
                await self._wait_while_paused()
                idle_since = time.monotonic()
                continue
            batch = await self._fetch()
            if self._fatal is not None:
                raise self._fatal
            if batch or self._unrecorded_revokes:
                async with self._lock:
                    await self._record_revokes()
                    await self._work(batch)
                idle_since = time.monotonic()
            elif self.until_idle is not None:
                idle_for = time.monotonic() - max(idle_since, self._last_rebalance)
                if idle_for >= self.until_idle and await self._caught_up():
                    log.info("consumer.idle", idle_seconds=round(idle_for, 1))
                    return

    async def _pause_asked(self) -> bool:
        """Whether an operator paused the run; asked of the ledger at most
        every PAUSE_POLL_SECONDS, between batches."""
        now = time.monotonic()
        if now < self._next_pause_check:
            return False
        self._next_pause_check = now + PAUSE_POLL_SECONDS
        return await self._call(self.recorder.pause_asked)

    async def _wait_while_paused(self) -> None:
        """Records the pause, then holds every partition still, polling on
        so the group keeps this member, until the pause is lifted."""
        await self._call(self.recorder.acknowledge_pause)
        self._paused = True
        self.consumer.pause(*self.consumer.assignment())
        log.info("consumer.paused", run_id=self.summary.run_id)
        try:
            while not self._stop.is_set():
                # Paused partitions give nothing; the poll keeps us a member.
                fetched = await self.consumer.getmany(
                    timeout_ms=int(PAUSE_POLL_SECONDS * 1000)
                )
                self._fetched.accept(fetched)
                if not await self._call(self.recorder.still_paused):
                    break
        finally:
            self._paused = False
            self.consumer.resume(*self.consumer.assignment())
        log.info("consumer.resumed", run_id=self.summary.run_id)

    async def _fetch(self) -> dict[str, list[Message]]:
        """A batch: up to `batch_max_records` messages, or what came within
        `batch_max_seconds` of the first one."""
        limit, seconds = self.job.batch_max_records, self.job.batch_max_seconds
        fetched = self._fetched

        # What the client already holds for other partitions joins the
        # buffer first, so a long backlog on one cannot starve the rest.
        if len(fetched):
            fetched.accept(await self.consumer.getmany(timeout_ms=0))
        deadline = time.monotonic() + seconds if len(fetched) else None
        while len(fetched) < limit and not self._stop.is_set():
            wait = seconds if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            fetched.accept(await self.consumer.getmany(timeout_ms=int(wait * 1000)))
            if deadline is None:
                if not len(fetched):
                    return {}
                deadline = time.monotonic() + seconds
        return fetched.take(limit)

    async def _caught_up(self) -> bool:
        """Whether there is nothing left to read.

        A member with partitions looks at its own: the client's position,
        which steps over transaction markers and deleted messages, against
        each partition's end. A member with none (its partitions may be
        parked on a departed static member until its session expires) waits
        until the group's ledger positions reach the end of every partition
        that the group has ever read.
        """
        assigned = list(self.consumer.assignment())
        if assigned:
            ends = await self.consumer.end_offsets(assigned)
            for tp in assigned:
                if await self.consumer.position(tp) < ends[tp]:
                    return False
            return True
        partitions = []
        for topic in self.job.topics:
            numbers = self.consumer.partitions_for_topic(topic)
            if not numbers:
                return False
            partitions += [TopicPartition(topic, n) for n in sorted(numbers)]
        ends = await self.consumer.end_offsets(partitions)
        firsts = await self.consumer.beginning_offsets(partitions)
        recorded = await self._call(self.recorder.positions)
        for tp in partitions:
            position = recorded.get(_tp_key(tp))
            if position is not None and max(position, firsts[tp]) < ends[tp]:
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
            generation = self._generation
            try:
                number = await self._call(recorder.start_batch, ranges)
            except PausedAtBoundary:
                self._set_aside(parts[index:])
                return
            faults.enter_batch(CONSUME_STEP, number)
            try:
                handled = await self._call(
                    handle_batch,
                    self.job,
                    recorder.current,
                    part,
                    stopped=self._revoking.__contains__,
                    begin_record=recorder.effects.begin_record,
                )
                if self.summary.first_message_after is None and handled.done:
                    self.summary.first_message_after = time.monotonic() - self._started
                faults.hit("in_batch")
                written = await self._call(self._write, handled.outputs)
                faults.hit("after_write")
            except BaseException:
                await self._call(recorder.effects.flush_quietly)
                raise

            # Effects' outcomes are recorded before the checkpoint.
            await self._call(recorder.effects.flush)
            copies = await copy_to_quarantine(
                self._producer, self.job, handled, self.recorder
            )
            highwaters = {
                _tp_key(tp): self.consumer.highwater(tp)
                for tp in self.consumer.assignment()
            }
            read_past = (
                await self._read_past(part, handled, later)
                if generation == self._generation
                else {}
            )
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

    def _write(self, outputs: list[tuple[Message, Any]]) -> int:
        self.recorder.effects.begin_record()
        return self.job.write(outputs)

    def _set_aside(self, parts: list[dict[str, list[Message]]]) -> None:
        """Gives back messages fetched but not begun, when a pause is found
        at a batch boundary: each partition is read again from its first
        such message once the pause is lifted."""
        assigned = {_tp_key(tp): tp for tp in self.consumer.assignment()}
        firsts: dict[str, int] = {}
        for part in parts:
            for key, messages in part.items():
                if messages and key not in firsts:
                    firsts[key] = messages[0].offset
        for key, offset in firsts.items():
            self._fetched.drop(key)
            if key in assigned:
                self.consumer.seek(assigned[key], offset)
                self._fetched.expect(key, offset)

        # The loop looks for the pause at once, and waits there.
        self._next_pause_check = 0.0

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
            if key in later or self._fetched.holds(key) or key not in assigned:
                continue
            try:
                found[key] = await self.consumer.position(assigned[key])
            except KafkaError:
                continue
            self._fetched.read_past(key, found[key])
        return found

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
                self._fetched.expect(key, position)
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

    def _fail_from_listener(self, error: Exception) -> None:
        log.error("rebalance.failed", error=f"{type(error).__name__}: {error}")
        if self._fatal is None:
            self._fatal = (
                error
                if isinstance(error, LedgerError)
                else LedgerError(
                    f"a rebalance could not be handled ({type(error).__name__}: "
                    f"{error}); start the consumer again"
                )
            )

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        self._last_rebalance = time.monotonic()
        self._generation += 1
        keys = {_tp_key(tp) for tp in revoked}
        self._revoking |= keys
        for key in keys:
            self._fetched.drop(key)
        if self._stop.is_set() or not keys:
            return

        # Let the batch in flight finish and checkpoint what it did in time;
        # past the deadline the group moves on, and the revocation is
        # recorded once that batch ends.
        self._unrecorded_revokes |= keys
        try:
            await asyncio.wait_for(self._lock.acquire(), REVOKE_TIMEOUT_S)
        except TimeoutError:
            log.warning("partitions.revoke_timeout", partitions=sorted(keys))
            return
        try:
            await self._record_revokes()
        finally:
            self._lock.release()

    async def _record_revokes(self) -> None:
        """Records the revocations not yet recorded; call under the lock."""
        keys, self._unrecorded_revokes = self._unrecorded_revokes, set()
        run = self.recorder.current
        items = [
            {"partition": key, "next": run.partitions.get(key)}
            for key in sorted(keys)
            if key in run.partitions
        ]
        if items:
            await self._call(self.recorder.record_revoked, items)
        if keys:
            log.info("partitions.revoked", partitions=sorted(keys))

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Seeks each partition to the ledger's position; reports how
        Kafka's committed offset, and the log, compare."""
        self._last_rebalance = time.monotonic()
        self._generation += 1
        self._revoking -= {_tp_key(tp) for tp in assigned}
        self._unrecorded_revokes -= {_tp_key(tp) for tp in assigned}
        if not assigned:
            return
        # A batch still in flight from before the rebalance (its revoke
        # timed out) may hold these very partitions: let it checkpoint
        # first, so that the placement reads where it really got to.
        locked = True
        try:
            await asyncio.wait_for(self._lock.acquire(), REVOKE_TIMEOUT_S)
        except TimeoutError:
            locked = False
            log.warning("partitions.assign_without_lock", partitions=len(assigned))
        try:
            await self._place(assigned)
            if self._paused:
                self.consumer.pause(*assigned)
        finally:
            if locked:
                self._lock.release()

    async def _place(self, assigned: list[TopicPartition]) -> None:
        recorded = await self._call(self.recorder.positions)
        firsts = await self.consumer.beginning_offsets(assigned)
        ends = await self.consumer.end_offsets(assigned)
        items = []
        repair: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in sorted(assigned):
            key = _tp_key(tp)
            kafka_position = await self.consumer.committed(tp)
            try:
                placed = place_partition(
                    key, recorded.get(key), kafka_position,
                    first=firsts[tp], end=ends[tp],
                    reset_to_end=self.job.auto_offset_reset == "latest",
                )  # fmt: skip
            except PositionPastLogEnd as error:
                # Recorded for the audit trail; the loop then stops on it.
                self._fatal = error
                log.error("partition.past_end", partition=key, end=error.end)
                items.append(
                    {
                        "partition": key, "start": error.position,
                        "source": "ledger", "ledger": recorded.get(key),
                        "kafka": kafka_position, "divergence": "past-end",
                    }
                )  # fmt: skip
                continue
            self.consumer.seek(tp, placed.start)
            self._fetched.expect(key, placed.start)
            items.append(placed.as_dict())
            log.info(
                "partition.assigned",
                partition=key,
                start=placed.start,
                source=placed.source,
            )
            if placed.divergence != "none":
                log.warning(
                    "partition.diverged",
                    partition=key,
                    ledger=placed.ledger,
                    kafka=placed.kafka,
                    divergence=placed.divergence,
                )
                self.summary.divergences.append(placed.as_dict())
                repair[tp] = OffsetAndMetadata(placed.start, "ledger position")

        # Kafka is set back in line with the ledger at once.
        if repair:
            try:
                await self.consumer.commit(repair)
            except KafkaError as error:
                log.warning("kafka.repair_failed", error=type(error).__name__)
        await self._call(self.recorder.record_assigned, items)
