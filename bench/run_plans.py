"""What the runs of three jobs look like, batch by batch, before recording.

A plan lists each step's batches with their record ranges, positions,
counters and quarantined records; `status_ledger` walks plans through the
real aggregates. Three jobs share the ledger:

- `flights-import`, daily: the real job's batches. Ranges, byte offsets,
  quarantined rows with their payloads and the unknown-plane counts come
  from running the job's own steps over the real input once;
- `billing-sync`, six times a day: 30-50 thousand invoices in batches of
  1,000, a few quarantined for a bad currency or an unknown customer;
- `nightly-export`, daily: 20-60 thousand rows in batches of 2,000.

The two made-up jobs follow the same event grammar with plausible sizes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from measure import load_flights_module

from ledger import Record, Reject

__all__ = ["Batch", "Day", "Quarantine", "RunPlan", "StepPlan", "flights_steps"]

# Simulated calendar for input names and leases; event timestamps stay real.
FIRST_DAY = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
BILLING_RUNS_A_DAY = 6


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
    upload, _ = _synthetic_step(
        "upload", "part", numbers, 2000, lambda n: -(-n // 2000)
    )
    return [dump, compress, upload]


def _digest(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


class Day:
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
