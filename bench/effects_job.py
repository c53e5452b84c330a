"""The file job `effects_overhead.py` runs: one call downstream per record.

One step, `call`, reads the numbered lines of its input and, for each
record, makes one trivial in-process call: a dict insert into `SINK`, so
that what a benchmark measures around it is whatever wraps the call, not
the downstream. The `mode` parameter says what wraps it:

- `direct`: nothing; the call is made as it is (the baseline);
- `effect_keys`: `context.effect` on a downstream that honours keys;
- `effect_no_keys`: `context.effect` on one that does not;
- `outbox`: a hand-rolled write-ahead outbox (`Outbox`, an SQLite file or
  a PostgreSQL table): insert the key as 'intended' and commit before the
  call, mark it 'done' and commit after. The outbox is opened by whoever
  makes the job, as the ledger's store is opened before `run_job`, so that
  both sides' connections are made before the clock starts.

The step writes nothing itself (`write` only counts): the call is the
step's whole output, as it is for a job whose steps send records out.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import psycopg

from ledger import Checkpoint, Job, Record, RunContext, Step
from ledger.effects import EffectPolicy
from ledger.lines import read_lines

__all__ = ["MODES", "SINK", "EffectsJob", "Outbox", "open_outbox"]

MODES = ("direct", "effect_keys", "effect_no_keys", "outbox")

# The downstream: what every mode's call writes, by key. The benchmark
# clears it before a run and counts it after.
SINK: dict[str, Any] = {}

_OUTBOX_TABLE = (
    "CREATE TABLE IF NOT EXISTS outbox (key TEXT PRIMARY KEY, state TEXT NOT NULL)"
)


class Outbox(Protocol):
    commits: int

    def intend(self, key: str) -> None: ...

    def done(self, key: str) -> None: ...

    def close(self) -> None: ...


class SQLiteOutbox:
    """The outbox as an SQLite file, set up as the ledger sets up its own:
    WAL journal, the default (FULL) synchronous mode, one commit a write."""

    def __init__(self, path: str) -> None:
        self.commits = 0
        self.conn = sqlite3.connect(path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        with self.conn:
            self.conn.execute(_OUTBOX_TABLE)

    def intend(self, key: str) -> None:
        self.conn.execute(
            "INSERT INTO outbox (key, state) VALUES (?, 'intended')", (key,)
        )
        self.conn.commit()
        self.commits += 1

    def done(self, key: str) -> None:
        self.conn.execute("UPDATE outbox SET state = 'done' WHERE key = ?", (key,))
        self.conn.commit()
        self.commits += 1

    def close(self) -> None:
        self.conn.close()


class PostgresOutbox:
    """The outbox as a PostgreSQL table, written through psycopg."""

    def __init__(self, url: str) -> None:
        self.commits = 0
        self.conn = psycopg.connect(url, connect_timeout=5)
        with self.conn.transaction():
            self.conn.execute(_OUTBOX_TABLE)

    def intend(self, key: str) -> None:
        self.conn.execute(
            "INSERT INTO outbox (key, state) VALUES (%s, 'intended')", (key,)
        )
        self.conn.commit()
        self.commits += 1

    def done(self, key: str) -> None:
        self.conn.execute("UPDATE outbox SET state = 'done' WHERE key = %s", (key,))
        self.conn.commit()
        self.commits += 1

    def close(self) -> None:
        self.conn.close()


def open_outbox(where: str) -> Outbox:
    """An SQLite file path, or a PostgreSQL URL."""
    if where.startswith("postgresql://"):
        return PostgresOutbox(where)
    return SQLiteOutbox(where)


class Call:
    """The job's one step; see the module docstring."""

    name = "call"
    position_kind = "line"

    def __init__(
        self, path: Path, mode: str, context: RunContext, outbox: Outbox | None
    ) -> None:
        self.path = path
        self.mode = mode
        self.context = context
        self.outbox = outbox

    def size(self) -> int | None:
        return None

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        return read_lines(self.path, after)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        data = record.data

        def deliver(key: str) -> None:
            SINK[key] = data

        if self.mode == "direct":
            deliver(str(record.number))
        elif self.mode == "effect_keys":
            self.context.effect("sink_keys", record, deliver)
        elif self.mode == "effect_no_keys":
            self.context.effect("sink_no_keys", record, deliver)
        else:
            assert self.outbox is not None
            key = str(record.number)
            self.outbox.intend(key)
            deliver(key)
            self.outbox.done(key)
        return None

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        return len(outputs)

    def verify(self, written: int) -> None:
        """Nothing to check: the step's output is the calls themselves."""


class EffectsJob(Job):
    name = "effects-overhead"
    version = "1"
    parameters: ClassVar[dict[str, Any]] = {"mode": "direct"}
    effects: ClassVar[dict[str, EffectPolicy]] = {
        "sink_keys": EffectPolicy(honours_keys=True),
        "sink_no_keys": EffectPolicy(honours_keys=False),
    }

    def __init__(self, outbox: Outbox | None = None) -> None:
        self.outbox = outbox

    def open(self, context: RunContext) -> Sequence[Step]:
        mode = str(context.params["mode"])
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")
        if mode == "outbox" and self.outbox is None:
            raise ValueError("mode outbox: make the job with EffectsJob(outbox)")
        return [Call(Path(context.input.path), mode, context, self.outbox)]

    def close(self, context: RunContext, *, completed: bool) -> None:
        if self.outbox is not None:
            self.outbox.close()


job = EffectsJob()
