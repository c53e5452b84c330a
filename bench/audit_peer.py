"""The peer of `ledger report` and `ledger status --as-of`: read the events.

The least work any answer about a run's past can do: one raw `SELECT` of
the run's stored events (or of several runs' events) in order, and each
event's JSON decoded with orjson. No aggregate, no read tables, no words,
no rendering: whatever the ledger does on top of this is its own cost.

Usage: python bench/audit_peer.py URL RUN_ID [RUN_ID ...]

URL is `sqlite:///PATH` or `postgresql://...`. Prints one JSON object:
how many events were decoded, and the last one's timestamp.
"""

from __future__ import annotations

import sqlite3
import sys
from contextlib import closing
from typing import Any
from uuid import UUID

import orjson

__all__ = ["read_events"]


def read_events(url: str, run_ids: list[str]) -> list[dict[str, Any]]:
    """The runs' stored events, decoded, each run's in version order."""
    if url.startswith("postgresql://"):
        return _postgres(url, run_ids)
    path = url.removeprefix("sqlite:///")
    marks = ", ".join("?" for _ in run_ids)
    sql = (
        "SELECT state FROM stored_events "
        f"WHERE originator_id IN ({marks}) ORDER BY originator_id, originator_version"
    )
    keys = [UUID(run_id).hex for run_id in run_ids]
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return [orjson.loads(row[0]) for row in conn.execute(sql, keys)]


def _postgres(url: str, run_ids: list[str]) -> list[dict[str, Any]]:
    import psycopg

    sql = (
        "SELECT state FROM ledger_events WHERE originator_id = ANY(%s) "
        "ORDER BY originator_id, originator_version"
    )
    with psycopg.connect(url) as conn:
        rows = conn.execute(sql, ([UUID(run_id) for run_id in run_ids],))
        return [orjson.loads(row[0]) for row in rows]


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python bench/audit_peer.py URL RUN_ID [RUN_ID ...]")
    events = read_events(sys.argv[1], sys.argv[2:])
    last = events[-1]["timestamp"] if events else None
    sys.stdout.write(orjson.dumps({"events": len(events), "last": last}).decode())
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
