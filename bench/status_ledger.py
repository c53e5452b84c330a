"""A ledger of a million real events, made through the real write side.

The events are what months of three jobs leave behind: a daily import of
the NYC flights table, an hourly-ish billing sync and a nightly export.
Every event is triggered on the product's own `Run` and `InputRuns`
aggregates and saved by `Ledger.save`, so the stored bytes are exactly
what `ledger run` would store. Only the work between the events is
skipped, and one save covers a whole attempt (the library writes it in
one transaction), which makes a million events take about a minute.

The flights runs are the real job's events: batch ranges, byte offsets,
quarantined rows with their payloads and the unknown-plane counts all come
from running the job's own steps over the real input once. The other two
jobs follow the same event grammar with made-up but plausible sizes.

Some runs fail (and a later attempt resumes them), some lose their worker
(and the next attempt records the crash), and each job's latest run ends
differently: completed, failed, interrupted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import sqlite3
import sys
import time
from collections import Counter
from contextlib import closing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import orjson

from ledger import Record, Reject
from ledger.config import parse_ledger_url
from ledger.run import InputRuns, Run
from ledger.store import Ledger, open_ledger

__all__ = ["FORMAT", "LedgerBuilt", "build_ledger", "load_flights_module"]

# Bumped whenever the events made here change, so a cached ledger from an
# older generator is never measured as if it were this one's.
FORMAT = 3

SEED = 20261204
FLIGHTS_JOB = Path(__file__).resolve().parent.parent / "examples" / "flights.py"

# Simulated calendar: one day holds one flights import, six billing syncs
# and one export; event timestamps stay real, the names and leases use it.
FIRST_DAY = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
BILLING_RUNS_A_DAY = 6

FAIL_SHARE = 0.08
CRASH_SHARE = 0.02

HOSTS = ("etl-worker-1", "etl-worker-2", "etl-worker-3")


@dataclass(frozen=True)
class Quarantine:
    record: int
    reason: str
    detail: str
    payload: Any


@dataclass(frozen=True)
class Batch:
    first_record: int
    last_record: int
    position: int
    records: int
    written: int
    quarantined: list[Quarantine] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StepPlan:
    name: str
    position_kind: str
    batches: list[Batch]


@dataclass(frozen=True)
class RunPlan:
    job: str
    version: str
    job_ref: str
    input: dict[str, Any]
    params: dict[str, Any]
    steps: list[StepPlan]
    errors: tuple[tuple[str, str], ...]


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


def load_flights_module() -> ModuleType:
    """examples/flights.py, imported from its path like `ledger run` does."""
    spec = importlib.util.spec_from_file_location("bench_flights_job", FLIGHTS_JOB)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {FLIGHTS_JOB}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _batched(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def flights_steps() -> list[StepPlan]:
    """The real flights job's batches, found by running its steps once."""
    flights = load_flights_module()
    folder = flights.data_folder()

    # Handling never touches the output; an in-memory one satisfies the
    # constructors without writing a file.
    output = flights.Output(Path(":memory:"))
    extract = flights.Extract(folder / "flights.csv.zip", output, "bench")
    enrich = flights.Enrich(flights.load_planes(folder / "planes.csv"), output, "")

    # One pass: extract positions, enrich rejections and counters per row.
    rows: list[tuple[int, int]] = []
    rejected: dict[int, Quarantine] = {}
    unknown: set[int] = set()
    for record in extract.read(None):
        rows.append((record.number, record.position))
        counters: Counter[str] = Counter()
        parsed = extract.handle(record, counters)
        try:
            enrich.handle(Record(record.number, record.number, parsed), counters)
        except Reject as reject:
            rejected[record.number] = Quarantine(
                record.number, reject.reason, reject.detail, reject.payload
            )
        if counters["plane_unknown"]:
            unknown.add(record.number)
    output.db.close()

    size = 5000
    extract_batches = [
        Batch(chunk[0][0], chunk[-1][0], chunk[-1][1], len(chunk), len(chunk))
        for chunk in _batched(rows, size)
    ]
    enrich_batches = []
    for chunk in _batched(rows, size):
        numbers = [number for number, _ in chunk]
        held = [rejected[n] for n in numbers if n in rejected]
        enrich_batches.append(
            Batch(
                numbers[0], numbers[-1], numbers[-1], len(numbers),
                len(numbers) - len(held), held,
                {"plane_unknown": sum(1 for n in numbers if n in unknown)},
            )
        )  # fmt: skip
    loaded = [number for number, _ in rows if number not in rejected]
    load_batches = [
        Batch(chunk[0], chunk[-1], chunk[-1], len(chunk), len(chunk))
        for chunk in _batched(loaded, size)
    ]
    return [
        StepPlan("extract", "file offset", extract_batches),
        StepPlan("enrich", "row", enrich_batches),
        StepPlan("load", "row", load_batches),
    ]


def _synthetic_step(
    name: str,
    kind: str,
    numbers: list[int],
    size: int,
    position: Callable[[int], int],
    reject: Callable[[int], Quarantine | None] | None = None,
) -> tuple[StepPlan, list[int]]:
    """A step over the given record numbers; returns the ones it passed on."""
    batches = []
    passed: list[int] = []
    for chunk in _batched(numbers, size):
        held = [q for q in map(reject, chunk) if q is not None] if reject else []
        gone = {q.record for q in held}
        passed.extend(n for n in chunk if n not in gone)
        batches.append(
            Batch(
                chunk[0], chunk[-1], position(chunk[-1]), len(chunk),
                len(chunk) - len(held), held,
            )
        )  # fmt: skip
    return StepPlan(name, kind, batches), passed


def billing_steps(rng: random.Random) -> list[StepPlan]:
    invoices = rng.randint(30_000, 50_000)

    def reject(number: int) -> Quarantine | None:
        if rng.random() >= 0.0015:
            return None
        currency = rng.choice(["EUR", "USD", "GBP", "XEU", ""])
        payload = {
            "invoice": f"INV-{number:08d}",
            "customer": f"C{rng.randint(10_000, 99_999)}",
            "amount": round(rng.uniform(5, 4_000), 2),
            "currency": currency,
            "issued": "2026-03-01",
        }
        if currency in ("XEU", ""):
            return Quarantine(
                number, "invalid_currency", f"currency {currency!r} is not ISO 4217",
                payload,
            )  # fmt: skip
        return Quarantine(
            number, "missing_customer",
            f"customer {payload['customer']} is not in the CRM", payload,
        )  # fmt: skip

    fetch, numbers = _synthetic_step(
        "fetch", "api cursor", list(range(1, invoices + 1)), 1000,
        lambda n: 7_000_000 + n * 3,
    )  # fmt: skip
    transform, numbers = _synthetic_step(
        "transform", "row", numbers, 1000, lambda n: n, reject
    )
    publish, _ = _synthetic_step("publish", "row", numbers, 1000, lambda n: n)
    return [fetch, transform, publish]


def export_steps(rng: random.Random) -> list[StepPlan]:
    rows = rng.randint(20_000, 60_000)
    numbers = list(range(1, rows + 1))
    dump, _ = _synthetic_step("dump", "row", numbers, 2000, lambda n: n)
    compress, _ = _synthetic_step(
        "compress", "byte offset", numbers, 2000, lambda n: n * 212
    )
    upload, _ = _synthetic_step("upload", "part", numbers, 2000, lambda n: -(-n // 2000))
    return [dump, compress, upload]


def _digest(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


class _Day:
    """The plans of one simulated day, in the order the jobs start."""

    def __init__(self, rng: random.Random, flights: list[StepPlan]) -> None:
        self.rng = rng
        self.flights = flights

    def plans(self, day: int) -> list[RunPlan]:
        date = (FIRST_DAY + timedelta(days=day)).date().isoformat()
        plans = [self.flights_run(date)]
        plans += [self.billing_run(date, hour) for hour in range(BILLING_RUNS_A_DAY)]
        plans.append(self.export_run(date))
        return plans

    def flights_run(self, date: str) -> RunPlan:
        return RunPlan(
            job="flights-import",
            version="1.0.0",
            job_ref="examples/flights.py",
            input={
                "name": f"flights-{date}.csv.zip",
                "path": f"/srv/imports/flights/flights-{date}.csv.zip",
                "size": 5_047_016 + self.rng.randint(-4000, 4000),
                "sha256": _digest(self.rng),
            },
            params={
                "batch_size": 5000,
                "max_quarantine_ratio": 0.2,
                "output": "/srv/warehouse/flights.sqlite",
                "planes": "",
            },
            steps=self.flights,
            errors=(
                ("OperationalError", "database is locked"),
                ("OSError", "[Errno 28] No space left on device"),
            ),
        )

    def billing_run(self, date: str, slot: int) -> RunPlan:
        return RunPlan(
            job="billing-sync",
            version="2.3.1",
            job_ref="jobs/billing_sync.py",
            input={
                "name": f"invoices-{date}-{slot * 4:02d}00.jsonl",
                "path": f"/srv/spool/billing/invoices-{date}-{slot * 4:02d}00.jsonl",
                "size": self.rng.randint(9_000_000, 15_000_000),
                "sha256": _digest(self.rng),
            },
            params={"batch_size": 1000, "max_quarantine_ratio": 0.2, "region": "eu"},
            steps=billing_steps(self.rng),
            errors=(
                ("HTTPError", "503 Service Unavailable from the billing API"),
                ("ConnectionResetError", "[Errno 104] Connection reset by peer"),
            ),
        )

    def export_run(self, date: str) -> RunPlan:
        return RunPlan(
            job="nightly-export",
            version="1.4.0",
            job_ref="jobs/nightly_export.py",
            input={
                "name": f"orders-{date}.parquet",
                "path": f"/srv/exports/orders-{date}.parquet",
                "size": self.rng.randint(2_000_000, 9_000_000),
                "sha256": _digest(self.rng),
            },
            params={"batch_size": 2000, "max_quarantine_ratio": 0.2, "bucket": "exp"},
            steps=export_steps(self.rng),
            errors=(("TimeoutError", "upload of a part did not finish in 120 s"),),
        )


class _Writer:
    """Walks run plans through the real aggregates and saves them."""

    def __init__(self, ledger: Ledger, rng: random.Random) -> None:
        self.ledger = ledger
        self.rng = rng
        self.boot_ids = {host: str(UUID(int=rng.getrandbits(128))) for host in HOSTS}
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

    def save(self, run: Run, *others: Any) -> None:
        for aggregate in (run, *others):
            for event in aggregate.pending_events:
                self.by_topic[type(event).__name__] += 1
            self.events += len(aggregate.pending_events)
        self.ledger.save(run, *others)

    def write(self, plan: RunPlan, day: int, ending: str | None = None) -> None:
        """One run; `ending` forces the last attempt's outcome."""
        rng = self.rng
        clock = FIRST_DAY + timedelta(days=day, minutes=rng.randint(0, 1380))
        key = hashlib.sha256(f"{plan.job}:{plan.input['sha256']}".encode()).hexdigest()

        # Where the first attempt stops, if it does: a step and a batch.
        cut: tuple[int, int] | None = None
        outcome = "completed"
        draw = rng.random()
        if ending is not None or draw < FAIL_SHARE + CRASH_SHARE:
            outcome = ending or ("failed" if draw < FAIL_SHARE else "crashed")
            step = rng.randrange(len(plan.steps))
            if ending is not None:
                step = 1
            cut = (step, rng.randrange(len(plan.steps[step].batches)))

        run = Run.start(
            run_id=UUID(int=rng.getrandbits(128), version=4),
            job=plan.job, job_version=plan.version, job_ref=plan.job_ref,
            input=plan.input, params=plan.params, input_key=key,
            steps=[step.name for step in plan.steps],
        )  # fmt: skip
        index = InputRuns.create(plan.job, key)
        index.add_run(run.id)
        self.runs += 1

        def lease() -> str:
            return (clock + timedelta(seconds=300)).isoformat()

        attempt = run.start_attempt(self.worker(), lease())
        for step_no, step in enumerate(plan.steps):
            run.start_step(attempt, step.name)
            for batch_no, batch in enumerate(step.batches):
                if (step_no, batch_no) == cut:
                    clock += timedelta(seconds=rng.randint(1, 30))
                    run.start_batch(
                        attempt, step.name, batch_no, batch.first_record, lease()
                    )
                    if outcome == "failed":
                        error_class, message = rng.choice(plan.errors)
                        run.fail(attempt, step.name, batch_no, error_class, message)
                    if ending is not None:
                        self.save(run, index)
                        return

                    # The next attempt: a crash is found and recorded first.
                    self.save(run, index)
                    index = None
                    clock += timedelta(minutes=rng.randint(5, 90))
                    me = self.worker()
                    if outcome == "crashed":
                        run.record_crash(
                            f"pid {run.worker['pid']} on host {run.worker['host']} "
                            "is gone",
                            detected_by=me,
                        )
                    attempt = run.start_attempt(me, lease())
                    run.start_step(attempt, step.name)
                self._batch(run, attempt, step, batch_no, batch, lease)
                clock += timedelta(seconds=rng.randint(1, 30))
            run.complete_step(attempt, step.name)
        run.complete(attempt, dict(run.totals))
        self.save(run, *([index] if index is not None else []))

    def _batch(
        self,
        run: Run,
        attempt: int,
        step: StepPlan,
        number: int,
        batch: Batch,
        lease: Callable[[], str],
    ) -> None:
        # The runtime's order: start, then quarantines and checkpoint.
        run.start_batch(attempt, step.name, number, batch.first_record, lease())
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
            lease_until=lease(),
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
    days = _Day(rng, flights_steps())

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
