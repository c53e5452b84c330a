"""The peer of `ledger status`: find each job's last checkpoint in the log.

This is what an operator can do without read tables: open the ledger's
SQLite file, read every stored event in the order it was recorded, decode
its JSON and keep, for each job, the last `BatchCheckpointed`. A run's job
name is only in its `Started` event, so those are remembered on the way.

Usage: python bench/status_peer.py LEDGER.sqlite [--filter-in-sql]

`--filter-in-sql` is the stronger peer: it lets SQLite skip the events
of other types, so only starts and checkpoints are decoded. The log has no
index on the topic, so the whole table is still read.

Prints one JSON object: job name -> last checkpoint (step, batch, records,
position), the same fields `ledger status --json` shows.
"""

from __future__ import annotations

import sqlite3
import sys
from contextlib import closing
from typing import Any

import orjson

__all__ = ["last_checkpoints"]

STARTED = "ledger.run:Run.Started"
CHECKPOINTED = "ledger.run:Run.BatchCheckpointed"
FIELDS = ("step", "batch", "first_record", "last_record", "position")


def last_checkpoints(path: str, *, filter_in_sql: bool = False) -> dict[str, Any]:
    """Each job's last checkpoint, read from the whole log in order."""
    sql = "SELECT originator_id, topic, state FROM stored_events"
    args: tuple[str, ...] = ()
    if filter_in_sql:
        sql += " WHERE topic IN (?, ?)"
        args = (STARTED, CHECKPOINTED)
    sql += " ORDER BY rowid"

    jobs: dict[str, str] = {}
    last: dict[str, dict[str, Any]] = {}
    uri = f"file:{path}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        for run_id, topic, state in conn.execute(sql, args):
            event = orjson.loads(state)
            if topic == STARTED:
                jobs[run_id] = event["job"]
            elif topic == CHECKPOINTED:
                last[jobs[run_id]] = event

    return {
        job: {name: event[name] for name in FIELDS}
        for job, event in sorted(last.items())
    }


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/status_peer.py LEDGER.sqlite [--filter-in-sql]")
    found = last_checkpoints(sys.argv[1], filter_in_sql="--filter-in-sql" in sys.argv)
    sys.stdout.write(orjson.dumps(found).decode() + "\n")


if __name__ == "__main__":
    main()
