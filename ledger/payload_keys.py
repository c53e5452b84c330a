"""The payload key table: one random key per sealed quarantined payload.

A quarantined record's whole payload is kept encrypted in its quarantine
event (see `ledger.sealing`); the key that opens it lives here, in a table
of its own beside the events table, never in an event. Events are
append-only and hash-chained; this table is not: destroying a key is an
update that blanks it and records when and why. Once a key is blanked its
payload can never be read again, while the event that holds the sealed
payload, its preview and every decision about the record stay as they
were recorded.

The table is `payload_keys` on SQLite and `ledger_payload_keys` on
PostgreSQL, created the first time a ledger needs it. A key is written in
its own transaction before the event that names it, so that no stored
event ever names a key that was never stored.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import weakref
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import PersistenceError
from eventsourcing.postgres import PostgresDatastore
from psycopg.sql import SQL, Identifier

from ledger.store import Ledger

__all__ = ["PAYLOAD_KEYS_TABLE", "KeyTable", "PayloadKey"]

# Named like the library's own tables on each store.
PAYLOAD_KEYS_TABLE = {"sqlite": "payload_keys", "postgresql": "ledger_payload_keys"}

_COLUMNS = (
    "key_id, run_id, quarantine_id, key_bytes, wrapped_by, created_at, "
    "destroyed_at, destroyed_why"
)

# Datastores whose table is known to exist, so it is created once each.
_READY: weakref.WeakSet[Any] = weakref.WeakSet()

# Two processes creating the table at once on PostgreSQL race on the
# catalog; the loser finds the table made when it tries again.
_CREATE_TRIES = 5
_RACE_SIGNS = ("concurrently", "already exists", "pg_type_typname_nsp_index")


@dataclass(frozen=True)
class PayloadKey:
    """One row: the key of one sealed payload of one quarantined record.

    `key_bytes` is the key itself, or (when `wrapped_by` names a master
    key's fingerprint) the key encrypted with that master key; None once
    destroyed, when `destroyed_at` and `destroyed_why` say when and why.
    """

    key_id: str
    run_id: str
    quarantine_id: str
    key_bytes: bytes | None
    wrapped_by: str | None
    created_at: str
    destroyed_at: str | None = None
    destroyed_why: str | None = None

    @property
    def destroyed(self) -> bool:
        return self.key_bytes is None


class KeyTable:
    """The payload key table of one opened ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.datastore: Any = ledger.recorder.datastore  # type: ignore[attr-defined]
        self.is_postgres = isinstance(self.datastore, PostgresDatastore)
        kind = "postgresql" if self.is_postgres else "sqlite"
        self.name = PAYLOAD_KEYS_TABLE[kind]

    # Writing.

    def insert(self, keys: Sequence[PayloadKey]) -> None:
        """Stores new keys, all in one transaction."""
        if not keys:
            return
        statement = self._sql(
            f"INSERT INTO {{table}} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        rows = [
            (
                key.key_id, key.run_id, key.quarantine_id, key.key_bytes,
                key.wrapped_by, key.created_at, None, None,
            )
            for key in keys
        ]  # fmt: skip
        with self._transaction(commit=True) as cursor:
            cursor.executemany(statement, rows)

    def destroy(
        self, run_id: str, quarantine_ids: Collection[str] | None, why: str
    ) -> list[str]:
        """Blanks every live key of the run (of the given records only, when
        named); returns the quarantine ids whose keys were blanked now.
        Keys already destroyed keep when and why they were: destroying
        again changes nothing, so a repeat after a crash is harmless."""
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        where = "run_id = ? AND key_bytes IS NOT NULL"
        args: tuple[Any, ...] = (run_id,)
        if quarantine_ids is not None:
            ids = sorted(set(quarantine_ids))
            if not ids:
                return []
            where += f" AND quarantine_id IN ({', '.join('?' for _ in ids)})"
            args += tuple(ids)

        with self._transaction(commit=True) as cursor:
            # Overwritten pages are zeroed on SQLite, so the key's bytes do
            # not linger in the file's free space (see the README's limits).
            if not self.is_postgres:
                cursor.execute("PRAGMA secure_delete = ON")

            # One statement that writes first: on SQLite a transaction that
            # read before writing fails outright if another writer came in
            # between, where a write waits its turn.
            cursor.execute(
                self._sql(
                    "UPDATE {table} SET key_bytes = NULL, destroyed_at = ?, "
                    f"destroyed_why = ? WHERE {where} RETURNING quarantine_id"
                ),
                (now, why[:500], *args),
            )
            destroyed = sorted({row["quarantine_id"] for row in cursor.fetchall()})
        if destroyed and not self.is_postgres:
            self._truncate_wal()
        return destroyed

    def _truncate_wal(self) -> None:
        """Best effort: SQLite's write-ahead log still holds the page the key
        was first written to until it is checkpointed and truncated; a
        reader holding it open defers that to a later destruction."""
        with (
            self.datastore.get_connection(commit=True) as connection,
            contextlib.suppress(sqlite3.Error),
        ):
            cursor = connection.cursor()
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cursor.fetchall()

    # Reading.

    def get(self, key_id: str) -> PayloadKey | None:
        rows = self._select("key_id = ?", (key_id,))
        return rows[0] if rows else None

    def of_record(self, run_id: str, quarantine_id: str) -> list[PayloadKey]:
        """Every key ever made for the record, oldest first."""
        return self._select("run_id = ? AND quarantine_id = ?", (run_id, quarantine_id))

    def live_of_runs(self) -> dict[str, list[PayloadKey]]:
        """Every key not destroyed, by run id."""
        found: dict[str, list[PayloadKey]] = {}
        for key in self._select("key_bytes IS NOT NULL", ()):
            found.setdefault(key.run_id, []).append(key)
        return found

    def _select(self, where: str, args: tuple[Any, ...]) -> list[PayloadKey]:
        statement = self._sql(
            f"SELECT {_COLUMNS} FROM {{table}} WHERE {where} ORDER BY created_at"
        )
        with self._transaction(commit=False) as cursor:
            cursor.execute(statement, args)
            rows = cursor.fetchall()
        return [
            PayloadKey(
                key_id=row["key_id"],
                run_id=row["run_id"],
                quarantine_id=row["quarantine_id"],
                key_bytes=bytes(row["key_bytes"]) if row["key_bytes"] else None,
                wrapped_by=row["wrapped_by"],
                created_at=row["created_at"],
                destroyed_at=row["destroyed_at"],
                destroyed_why=row["destroyed_why"],
            )
            for row in rows
        ]

    # The table itself.

    @contextmanager
    def _transaction(self, *, commit: bool) -> Iterator[Any]:
        self._create_once()
        with self.datastore.transaction(commit=commit) as cursor:
            yield cursor

    def _create_once(self) -> None:
        if self.datastore in _READY:
            return
        key_type = "BYTEA" if self.is_postgres else "BLOB"
        statements = [
            f"CREATE TABLE IF NOT EXISTS {{table}} (key_id TEXT PRIMARY KEY, "
            f"run_id TEXT NOT NULL, quarantine_id TEXT NOT NULL, key_bytes "
            f"{key_type}, wrapped_by TEXT, created_at TEXT NOT NULL, "
            "destroyed_at TEXT, destroyed_why TEXT)",
            "CREATE INDEX IF NOT EXISTS {index} ON {table} (run_id, quarantine_id)",
        ]
        for tries in range(1, _CREATE_TRIES + 1):
            try:
                with self.datastore.transaction(commit=True) as cursor:
                    for statement in statements:
                        cursor.execute(self._sql(statement))
            except PersistenceError as error:
                text = str(error)
                racing = any(sign in text for sign in _RACE_SIGNS)
                if tries < _CREATE_TRIES and racing:
                    time.sleep(0.05 * tries)
                    continue
                raise
            break
        _READY.add(self.datastore)

    def _sql(self, text: str) -> Any:
        """The statement for this store: `{table}` (and `{index}`) named,
        `?` placeholders as the driver wants them."""
        index = f"{self.name}_record"
        if not self.is_postgres:
            return text.format(table=self.name, index=index)
        return SQL(text.replace("?", "%s")).format(
            table=Identifier(self.datastore.schema, self.name),
            index=Identifier(index),
        )
