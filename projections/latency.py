"""Checkpoint latency: how long each batch took from its start to its
checkpoint, per job, read from the event log.

The read tables keep only a run's current batch, not when each batch
started, so the latencies come from the log itself: every batch start
(`Run.BatchStarted`, `MessagesStarted`) is paired with its checkpoint
(`Run.BatchCheckpointed`, `MessagesCheckpointed`) by run, step, batch and
attempt. The log is followed incrementally, read-only, from the first event
on: a histogram covers every checkpoint the ledger holds, and each call
reads only what was appended since the last.

Limitation: the history lives in memory and is rebuilt by reading the
whole log once per process; a call reads at most `budget` events, so on a
large ledger the first calls fill the histogram over several scrapes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from projections.database import ReadDatabase

__all__ = ["BUCKETS", "CheckpointLatencies", "LatencyHistogram"]

# Upper bounds in seconds: batches of small jobs close in milliseconds,
# a stuck one in minutes or hours.
BUCKETS = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, 3600.0,
)  # fmt: skip

_STARTED = "ledger.run:Run.Started"
_BATCH_STARTED = {"ledger.run:Run.BatchStarted", "ledger.messages:MessagesStarted"}
_CHECKPOINTED = {
    "ledger.run:Run.BatchCheckpointed",
    "ledger.messages:MessagesCheckpointed",
}
_WANTED = {_STARTED, *_BATCH_STARTED, *_CHECKPOINTED}

# A consumer's batches all belong to its one step.
_CONSUMER_STEP = "consume"

# Batches started and never checkpointed (their attempt failed or
# crashed) are forgotten past this many, oldest first.
_MAX_PENDING = 10_000

_PASS_SIZE = 2000

_BatchKey = tuple[str, str, int, int]


@dataclass
class LatencyHistogram:
    """Counts per bucket (the last one is +Inf), their sum, and the total."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total_seconds += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, count at or below it) pairs, ending with +Inf."""
        pairs: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


class CheckpointLatencies:
    """Follows the log and keeps one latency histogram per job."""

    def __init__(self) -> None:
        self.by_job: dict[str, LatencyHistogram] = {}
        self._last_id = 0
        self._jobs: dict[str, str] = {}
        self._pending: dict[_BatchKey, datetime] = {}

    async def follow(self, db: ReadDatabase, *, budget: int = 50_000) -> int:
        """Reads up to `budget` events appended since the last call;
        returns how many were read."""
        read = 0
        while read < budget:
            rows = await db.events_after(self._last_id, min(_PASS_SIZE, budget - read))
            if not rows:
                break
            for _, run_id, topic, state in rows:
                self._apply(run_id, topic, state)
            self._last_id = rows[-1][0]
            read += len(rows)
        return read

    def _apply(self, run_id: str, topic: str, state: bytes) -> None:
        # Most events are neither: skip them before decoding anything.
        if topic not in _WANTED:
            return
        event = orjson.loads(state)
        if topic == _STARTED:
            self._jobs[run_id] = event["job"]
            return
        key = (
            run_id,
            event.get("step", _CONSUMER_STEP),
            event["batch"],
            event["attempt"],
        )
        at = datetime.fromisoformat(event["timestamp"])
        if topic in _BATCH_STARTED:
            self._pending[key] = at
            if len(self._pending) > _MAX_PENDING:
                del self._pending[next(iter(self._pending))]
            return

        # A checkpoint whose start was forgotten, or of a run whose start
        # this reader never saw, is not counted rather than guessed.
        started = self._pending.pop(key, None)
        job = self._jobs.get(run_id)
        if started is None or job is None:
            return
        histogram = self.by_job.setdefault(job, LatencyHistogram())
        histogram.observe(max(0.0, (at - started).total_seconds()))
