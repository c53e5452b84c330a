"""Numbers about the read side for monitoring: quarantine sizes, how far
the read tables trail the log, and how far consumers trail their topics.

Everything is read as the tables stand, without catching them up first:
the projection lag is the point of asking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import orjson

from projections.database import ReadDatabase
from projections.runner import position

__all__ = ["PartitionLag", "ReadSideGauges", "read_gauges"]


@dataclass(frozen=True)
class PartitionLag:
    """A consumer group's lag on one partition, at its latest checkpoint."""

    job: str
    group: str
    topic: str
    partition: str
    lag: int


@dataclass(frozen=True)
class ReadSideGauges:
    # Quarantined records per (job, state).
    quarantine: dict[tuple[str, str], int] = field(default_factory=dict)

    # Events in the log that the read tables do not hold yet.
    events_behind: int = 0

    # When the newest event the read tables hold was recorded; None before
    # the first one.
    newest_projected_at: datetime | None = None

    consumer_lag: list[PartitionLag] = field(default_factory=list)

    # Effects per (job, state); `uncertain` ones wait for an operator.
    effects: dict[tuple[str, str], int] = field(default_factory=dict)


async def read_gauges(db: ReadDatabase) -> ReadSideGauges:
    """The gauges, from a ledger whose read tables may not exist yet."""
    if not await db.has_table("proj_position"):
        return ReadSideGauges(events_behind=await db.count_events_after(0))
    last = await position(db)
    return ReadSideGauges(
        quarantine=await _quarantine(db),
        events_behind=await db.count_events_after(last),
        newest_projected_at=await _recorded_at(db, last),
        consumer_lag=await _consumer_lag(db),
        effects=await _effects(db),
    )


async def _quarantine(db: ReadDatabase) -> dict[tuple[str, str], int]:
    rows = await db.fetch(
        "SELECT r.job, q.state, COUNT(*) AS n FROM proj_quarantine q "
        "JOIN proj_runs r ON r.run_id = q.run_id GROUP BY r.job, q.state"
    )
    return {(row["job"], row["state"]): int(row["n"]) for row in rows}


async def _effects(db: ReadDatabase) -> dict[tuple[str, str], int]:
    # A ledger whose read tables predate effects has none.
    if not await db.has_table("proj_effects"):
        return {}
    rows = await db.fetch(
        "SELECT r.job, e.state, COUNT(*) AS n FROM proj_effects e "
        "JOIN proj_runs r ON r.run_id = e.run_id GROUP BY r.job, e.state"
    )
    return {(row["job"], row["state"]): int(row["n"]) for row in rows}


async def _recorded_at(db: ReadDatabase, event_id: int) -> datetime | None:
    """When the event with this notification id was recorded."""
    if event_id <= 0:
        return None
    rows = await db.events_after(event_id - 1, 1)
    if not rows or rows[0][0] != event_id:
        return None
    stamp = orjson.loads(rows[0][3]).get("timestamp")
    return datetime.fromisoformat(stamp) if isinstance(stamp, str) else None


async def _consumer_lag(db: ReadDatabase) -> list[PartitionLag]:
    """Per group and partition, the lag its newest checkpoint recorded.

    A partition handed from one member's run to another's appears in both
    runs; the row updated last is where the group stands.
    """
    rows = await db.fetch(
        "SELECT r.job, s.grp, p.part, p.lag, p.updated_at FROM proj_partitions p "
        "JOIN proj_streams s ON s.run_id = p.run_id "
        "JOIN proj_runs r ON r.run_id = p.run_id "
        "WHERE p.lag IS NOT NULL ORDER BY p.updated_at"
    )
    newest: dict[tuple[str, str, str], PartitionLag] = {}
    for row in rows:
        topic, _, number = str(row["part"]).rpartition("[")
        newest[(row["job"], row["grp"], row["part"])] = PartitionLag(
            job=row["job"],
            group=row["grp"],
            topic=topic,
            partition=number.rstrip("]"),
            lag=int(row["lag"]),
        )
    return list(newest.values())
