"""A ledger of a million real events, made through the real write side.

The events are what months of three jobs leave behind (see `run_plans`).
Every event is triggered on the product's own `Run` and `InputRuns`
aggregates and saved by `Ledger.save`, so the stored bytes are exactly
what `ledger run` would store. Only the work between the events is
skipped, and one save covers a whole attempt (the library writes it in
one transaction), which makes a million events take about a minute.

Some runs fail (and a later attempt resumes them), some lose their worker
(and the next attempt records the crash), and each job's latest run ends
differently: completed, failed, interrupted.

The finished ledger is cached with a small JSON file beside it that says
how it was made; a cache from another generator format is made again.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from run_plans import FIRST_DAY, Batch, Day, RunPlan, StepPlan, flights_steps

from ledger.config import parse_ledger_url
from ledger.input_runs import InputRuns
from ledger.run import Run
from ledger.store import Ledger, open_ledger

__all__ = ["FORMAT", "LedgerBuilt", "build_ledger"]

# Bumped whenever the events made here change, so a cached ledger from an
# older generator is never measured as if it were this one's.
FORMAT = 4

SEED = 20261204
FAIL_SHARE = 0.08
CRASH_SHARE = 0.02
HOSTS = ("etl-worker-1", "etl-worker-2", "etl-worker-3")


@dataclass
class LedgerBuilt:
    """How a ledger was made: read back from the cache on reuse."""

    path: Path
    events: int
    runs: int
    seconds: float
    reused: bool = False
    by_topic: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "events": self.events,
            "runs": self.runs,
            "generation_seconds": round(self.seconds, 2),
            "generation_events_per_s": round(self.events / self.seconds),
            "reused_from_cache": self.reused,
            "events_by_type": self.by_topic,
        }


class _Writer:
    """Walks run plans through the real aggregates and saves them."""

    def __init__(self, ledger: Ledger, rng: random.Random) -> None:
        self.ledger = ledger
        self.rng = rng
        self.boot_ids = {host: str(UUID(int=rng.getrandbits(128))) for host in HOSTS}
        self.clock = FIRST_DAY
        self.events = 0
        self.runs = 0
        self.by_topic: Counter[str] = Counter()

    def worker(self) -> dict[str, Any]:
        host = self.rng.choice(HOSTS)
        return {
            "host": host,
            "boot_id": self.boot_ids[host],
            "pid": self.rng.randint(1000, 60_000),
            "pid_started": str(self.rng.randint(10_000, 9_000_000)),
        }

    def lease(self) -> str:
        return (self.clock + timedelta(seconds=300)).isoformat()

    def tick(self, low: int = 1, high: int = 30) -> None:
        self.clock += timedelta(seconds=self.rng.randint(low, high))

    def save(self, run: Run, index: InputRuns | None) -> None:
        aggregates: list[Any] = [run] if index is None else [run, index]
        for aggregate in aggregates:
            for event in aggregate.pending_events:
                self.by_topic[type(event).__name__] += 1
            self.events += len(aggregate.pending_events)
        self.ledger.save(*aggregates)

    def write(self, plan: RunPlan, day: int, ending: str | None = None) -> None:
        """One run; with an `ending`, its first attempt stops that way for good."""
        self.clock = FIRST_DAY + timedelta(days=day, minutes=self.rng.randint(0, 1380))
        run, index = self._start(plan)
        cut, outcome = self._first_stop(plan, ending)

        # The runtime's order, one save per attempt instead of per batch.
        attempt = run.start_attempt(self.worker(), self.lease())
        for step_no, step in enumerate(plan.steps):
            run.start_step(attempt, step.name)
            for batch_no, batch in enumerate(step.batches):
                if (step_no, batch_no) == cut:
                    self._stop(run, attempt, step.name, batch_no, batch, outcome, plan)
                    self.save(run, index)
                    index = None
                    if ending is not None:
                        return
                    attempt = self._resume(run, step.name, outcome)
                self._batch(run, attempt, step, batch_no, batch)
            run.complete_step(attempt, step.name)
        run.complete(attempt, dict(run.totals))
        self.save(run, index)

    def _start(self, plan: RunPlan) -> tuple[Run, InputRuns]:
        """A new run and its input's index, as `run_job` makes them."""
        key = hashlib.sha256(f"{plan.job}:{plan.input['sha256']}".encode()).hexdigest()
        run = Run.start(
            run_id=UUID(int=self.rng.getrandbits(128), version=4),
            job=plan.job, job_version=plan.version, job_ref=plan.job_ref,
            input=plan.input, params=plan.params, input_key=key,
            steps=[step.name for step in plan.steps],
        )  # fmt: skip
        index = InputRuns.create(plan.job, key)
        index.add_run(run.id)
        self.runs += 1
        return run, index

    def _first_stop(
        self, plan: RunPlan, ending: str | None
    ) -> tuple[tuple[int, int] | None, str]:
        """Where (step, batch) and how the first attempt stops, if it does."""
        draw = self.rng.random()
        if ending is not None:
            # Half-way through the second step: a resume point a person
            # would otherwise have to hunt for.
            return (1, len(plan.steps[1].batches) // 2), ending
        if draw >= FAIL_SHARE + CRASH_SHARE:
            return None, "completed"
        step = self.rng.randrange(len(plan.steps))
        batch = self.rng.randrange(len(plan.steps[step].batches))
        return (step, batch), "failed" if draw < FAIL_SHARE else "crashed"

    def _stop(
        self,
        run: Run,
        attempt: int,
        step: str,
        number: int,
        batch: Batch,
        outcome: str,
        plan: RunPlan,
    ) -> None:
        """The batch starts; then the job fails, or its worker dies silently."""
        self.tick()
        run.start_batch(attempt, step, number, batch.first_record, self.lease())
        if outcome == "failed":
            error_class, message = self.rng.choice(plan.errors)
            run.fail(attempt, step, number, error_class, message)

    def _resume(self, run: Run, step: str, outcome: str) -> int:
        """The next attempt; a silent crash is found and recorded first."""
        self.tick(300, 5400)
        me = self.worker()
        if outcome == "crashed":
            gone = run.worker
            run.record_crash(
                f"pid {gone['pid']} on host {gone['host']} is gone", detected_by=me
            )
        attempt: int = run.start_attempt(me, self.lease())
        run.start_step(attempt, step)
        return attempt

    def _batch(
        self, run: Run, attempt: int, step: StepPlan, number: int, batch: Batch
    ) -> None:
        # The runtime's order: start, then quarantines and checkpoint.
        self.tick()
        run.start_batch(attempt, step.name, number, batch.first_record, self.lease())
        for held in batch.quarantined:
            run.quarantine(
                attempt, step.name, number, held.record, held.reason,
                held.detail, held.payload,
            )  # fmt: skip
        run.checkpoint_batch(
            attempt=attempt,
            step=step.name,
            batch=number,
            first_record=batch.first_record,
            last_record=batch.last_record,
            position=batch.position,
            position_kind=step.position_kind,
            records=batch.records,
            written=batch.written,
            quarantined=len(batch.quarantined),
            counters=batch.counters,
            lease_until=self.lease(),
        )


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".meta.json")


def _cached(path: Path, target: int) -> LedgerBuilt | None:
    """The cached ledger, if a finished generation of this format made it."""
    meta_path = _meta_path(path)
    if not (path.is_file() and meta_path.is_file()):
        return None
    meta = orjson.loads(meta_path.read_bytes())
    if meta.get("format") != FORMAT or meta.get("target") != target:
        return None

    # The file must still hold exactly what the generator recorded.
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        found = conn.execute("SELECT MAX(rowid) FROM stored_events").fetchone()[0]
    if found != meta["events"]:
        return None
    return LedgerBuilt(
        path, meta["events"], meta["runs"], meta["seconds"], True, meta["by_topic"]
    )


def build_ledger(
    path: Path, target: int, *, echo: Callable[[str], None] = print
) -> LedgerBuilt:
    """Reuses the cached ledger at `path`, or makes it with `target` events."""
    cached = _cached(path, target)
    if cached is not None:
        return cached

    # Written aside and renamed at the end, so an interrupted generation
    # never looks like a finished one.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    _meta_path(path).unlink(missing_ok=True)

    echo("reading the real flights input for the flights runs' shape ...")
    rng = random.Random(SEED)
    days = Day(rng, flights_steps())

    started = time.perf_counter()
    ledger = open_ledger(parse_ledger_url(f"sqlite:///{partial}"))
    writer = _Writer(ledger, rng)
    try:
        day = 0
        reported = 0
        while writer.events < target:
            for plan in days.plans(day):
                writer.write(plan, day)
            day += 1
            if writer.events - reported >= 100_000:
                reported = writer.events
                rate = writer.events / (time.perf_counter() - started)
                echo(f"  {writer.events:>9,} events, {rate:,.0f}/s")

        # Each job's latest run ends its own way, so status has all three.
        plans = days.plans(day)
        writer.write(plans[0], day)
        writer.write(plans[1], day, ending="failed")
        writer.write(plans[-1], day, ending="crashed")
        events = ledger.recorder.max_notification_id()
    finally:
        ledger.close()
    seconds = time.perf_counter() - started

    # Fold the write-ahead log into the file, so one file is the ledger.
    with closing(sqlite3.connect(partial)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    partial.replace(path)
    Path(f"{partial}-wal").unlink(missing_ok=True)
    Path(f"{partial}-shm").unlink(missing_ok=True)
    meta = {
        "format": FORMAT,
        "target": target,
        "events": events,
        "runs": writer.runs,
        "seconds": seconds,
        "by_topic": dict(writer.by_topic.most_common()),
    }
    _meta_path(path).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return LedgerBuilt(path, events, writer.runs, seconds, False, meta["by_topic"])
