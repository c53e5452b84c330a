"""The event store: the `eventsourcing` library's application and recorders.

One connection string (LEDGER_URL) chooses SQLite, the embedded default,
or PostgreSQL. Either way the ledger is a store of its own, never a table
inside a job's output, so an output failure cannot erase a resume marker.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    IntegrityError,
    PersistenceError,
    StoredEvent,
    Transcoder,
)
from eventsourcing.postgres import PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteProcessRecorder
from psycopg.sql import SQL, Identifier

from ledger import faults
from ledger.chain import Heads, StreamId, chain_events
from ledger.codec import OrjsonTranscoder
from ledger.config import TRACKING_TABLE, LedgerLocation, parse_ledger_url
from ledger.errors import LedgerError, LedgerUnavailable

__all__ = [
    "AggregateNotFoundError",
    "IntegrityError",
    "Ledger",
    "StreamRow",
    "StreamsChanged",
    "open_ledger",
    "opened",
]

# The events table on PostgreSQL is named after this: `ledger_events`.
APPLICATION_NAME = "Ledger"


class StreamsChanged(LedgerError):
    """Streams to delete hold other events than the caller read: some were
    appended since. Nothing was deleted."""

    def __init__(self, found: int, expected: int) -> None:
        super().__init__(
            f"{found} events found where {expected} were read: events were "
            "recorded since, so nothing was deleted"
        )
        self.found = found
        self.expected = expected


class StreamRow(NamedTuple):
    """One stored event as the database holds it, with its notification id."""

    notification_id: int
    stream: UUID
    version: int
    topic: str
    state: bytes


class Ledger(Application[UUID]):
    """The write side: aggregates are saved here, one transaction a save."""

    name = APPLICATION_NAME

    def construct_transcoder(self) -> Transcoder:
        return OrjsonTranscoder()

    def refreshed(self, aggregate: Any) -> Any:
        """The aggregate brought up to date with the events stored after its
        version: a cheap read for a copy that is polled (a heartbeat, a
        paused worker), where loading the whole stream each time would grow
        with the run. The copy must hold no pending events."""
        newer = self.repository.event_store.get(aggregate.id, gt=aggregate.version)
        for event in newer:
            aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
        return aggregate

    def positions(self, prefix: str) -> dict[str, int]:
        """Source positions recorded under names that start with `prefix`."""
        recorder = self.recorder
        assert isinstance(recorder, LedgerSQLiteRecorder | LedgerPostgresRecorder)
        return recorder.select_positions(prefix)


class _ChainingRecorder:
    """Appends each event's hash-chain keys as it is saved (ledger.chain).

    Mixed into both recorders ahead of the library's class: every save of
    every stream passes through `insert_events`, so no event is stored
    outside its chain.
    """

    _heads: Heads

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not hasattr(self, "_heads"):
            self._heads = Heads()
        events, heads = chain_events(stored_events, self._heads, self._read_event)
        ids: Sequence[int] | None = super().insert_events(  # type: ignore[misc]
            events, **kwargs
        )

        # Only now is the save committed, and its heads safe to reuse.
        self._heads.put(heads)
        return ids

    def restore_events(
        self, stored_events: Sequence[StoredEvent]
    ) -> Sequence[int] | None:
        """Stores events that carry their chain keys already, byte for byte
        (an archived run brought back): chaining them again would break
        the chain they have."""
        ids: Sequence[int] | None = super().insert_events(  # type: ignore[misc]
            stored_events
        )
        return ids

    def _read_event(self, stream: StreamId, version: int) -> StoredEvent | None:
        found: Sequence[StoredEvent] = self.select_events(  # type: ignore[attr-defined]
            stream, gt=version - 1, lte=version
        )
        return found[0] if found else None


class LedgerSQLiteRecorder(_ChainingRecorder, SQLiteProcessRecorder):
    """The library's process recorder, with positions of several sources.

    A save may carry `trackings`, a list of the library's tracking records
    (one per source partition, holding the next position to read). They are
    written in the save's transaction; one that does not move forward is
    refused, and every event of the save with it.
    """

    def _insert_events(
        self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        for tracking in kwargs.get("trackings", ()):
            self._insert_tracking(c, tracking)

        # A crash test can die here: rows written, nothing committed.
        faults.hit("in_checkpoint")
        return ids

    def select_stream_rows(self, streams: Sequence[UUID]) -> list[StreamRow]:
        """The streams' stored events with their notification ids, each
        stream in version order."""
        rows: list[StreamRow] = []
        with self.datastore.transaction(commit=False) as c:
            for stream in streams:
                c.execute(
                    f"SELECT rowid, originator_version, topic, state "
                    f"FROM {self.events_table_name} WHERE originator_id = ? "
                    f"ORDER BY originator_version",
                    (stream.hex,),
                )
                rows.extend(
                    StreamRow(int(r[0]), stream, int(r[1]), str(r[2]), bytes(r[3]))
                    for r in c.fetchall()
                )
        return rows

    def delete_streams(
        self,
        streams: Sequence[UUID],
        expected: int,
        also: Sequence[tuple[str, tuple[Any, ...]]],
    ) -> None:
        """Deletes the streams' events, and runs `also` (statements with `?`
        parameters) in the same transaction; only if the streams hold exactly
        `expected` events, else StreamsChanged and nothing is deleted.

        Events are only ever appended, so the count proves the streams are
        still the events the caller read. The count is taken after the
        deletes, which hold the database's write lock: no save slips in.
        """
        with self.datastore.transaction(commit=True) as c:
            deleted = 0
            for stream in streams:
                c.execute(
                    f"DELETE FROM {self.events_table_name} WHERE originator_id = ?",
                    (stream.hex,),
                )
                c.execute("SELECT changes()")
                deleted += int(c.fetchone()[0])
            if deleted != expected:
                raise StreamsChanged(deleted, expected)
            for statement, params in also:
                c.execute(statement, params)

    def select_positions(self, prefix: str) -> dict[str, int]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT application_name, notification_id FROM tracking "
                "WHERE substr(application_name, 1, ?) = ?",
                (len(prefix), prefix),
            )
            return {row[0]: int(row[1]) for row in c.fetchall()}


class LedgerPostgresRecorder(_ChainingRecorder, PostgresProcessRecorder):
    """The PostgreSQL twin of LedgerSQLiteRecorder (same contract)."""

    def __init__(
        self,
        datastore: Any,
        *,
        events_table_name: str = "ledger_events",
        tracking_table_name: str = TRACKING_TABLE["postgresql"],
    ) -> None:
        super().__init__(
            datastore,
            events_table_name=events_table_name,
            tracking_table_name=tracking_table_name,
        )

    def _insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # Positions first, as the library does: a refused one fails fast,
        # before the events table is locked.
        for tracking in kwargs.get("trackings", ()):
            self._insert_tracking(curs, tracking=tracking)
        super()._insert_events(curs, stored_events, **kwargs)
        faults.hit("in_checkpoint")

    def select_stream_rows(self, streams: Sequence[UUID]) -> list[StreamRow]:
        """The PostgreSQL twin of LedgerSQLiteRecorder.select_stream_rows."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT notification_id, originator_id, originator_version, "
                    "topic, state FROM {0}.{1} WHERE originator_id = ANY(%s) "
                    "ORDER BY originator_id, originator_version"
                ).format(
                    Identifier(self.datastore.schema),
                    Identifier(self.events_table_name),
                ),
                (list(streams),),
            )
            found = [
                StreamRow(
                    int(r["notification_id"]),
                    r["originator_id"],
                    int(r["originator_version"]),
                    str(r["topic"]),
                    bytes(r["state"]),
                )
                for r in curs.fetchall()
            ]
        order = {stream: index for index, stream in enumerate(streams)}
        return sorted(found, key=lambda row: (order[row.stream], row.version))

    def delete_streams(
        self,
        streams: Sequence[UUID],
        expected: int,
        also: Sequence[tuple[str, tuple[Any, ...]]],
    ) -> None:
        """The PostgreSQL twin of LedgerSQLiteRecorder.delete_streams; `also`
        takes `%s` parameters."""
        table = SQL("{0}.{1}").format(
            Identifier(self.datastore.schema), Identifier(self.events_table_name)
        )
        with self.datastore.transaction(commit=True) as curs:
            # The lock every save takes: none is made while this runs.
            curs.execute(SQL("LOCK TABLE {0} IN EXCLUSIVE MODE").format(table))
            curs.execute(
                SQL("DELETE FROM {0} WHERE originator_id = ANY(%s)").format(table),
                (list(streams),),
            )
            if int(curs.rowcount) != expected:
                raise StreamsChanged(int(curs.rowcount), expected)
            for statement, params in also:
                curs.execute(statement, params)

    def select_positions(self, prefix: str) -> dict[str, int]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT application_name, notification_id FROM {0}.{1} "
                    "WHERE left(application_name, %s) = %s"
                ).format(
                    Identifier(self.datastore.schema),
                    Identifier(self.tracking_table_name),
                ),
                (len(prefix), prefix),
            )
            return {
                row["application_name"]: int(row["notification_id"])
                for row in curs.fetchall()
            }


def store_env(location: LedgerLocation) -> dict[str, str]:
    """The library's settings for the given location."""
    env: dict[str, str] = {}
    if location.is_postgres:
        env.update(
            PERSISTENCE_MODULE="eventsourcing.postgres",
            POSTGRES_DBNAME=location.dbname,
            POSTGRES_HOST=location.host,
            POSTGRES_PORT=str(location.port),
            POSTGRES_USER=location.user,
            POSTGRES_PASSWORD=location.password,
            POSTGRES_CONNECT_TIMEOUT="5",
            POSTGRES_LOCK_TIMEOUT="30",
        )
        recorder: type = LedgerPostgresRecorder
    else:
        assert location.sqlite_path is not None
        env.update(
            PERSISTENCE_MODULE="eventsourcing.sqlite",
            SQLITE_DBNAME=str(location.sqlite_path),
            SQLITE_LOCK_TIMEOUT="30",
        )
        recorder = LedgerSQLiteRecorder
    env["APPLICATION_RECORDER_TOPIC"] = f"{recorder.__module__}:{recorder.__name__}"
    return env


def open_ledger(location: LedgerLocation | None = None) -> Ledger:
    """Opens (and on first use creates) the ledger at the given location."""
    location = location or parse_ledger_url()

    # SQLite: the folder is ours to create; a file that is not a database is
    # refused here rather than half-way through a job.
    if location.sqlite_path is not None:
        folder = location.sqlite_path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LedgerUnavailable(location.url, f"cannot create {folder}") from error

    for tries in range(1, _CREATE_TRIES + 1):
        try:
            ledger = Ledger(env=store_env(location))
            ledger.recorder.max_notification_id()
        except (PersistenceError, OSError, sqlite3.Error, psycopg.Error) as error:
            # Two processes creating a new PostgreSQL ledger at once race on
            # the catalog ("tuple concurrently updated", a duplicate type);
            # the loser finds the tables made when it tries again.
            if tries < _CREATE_TRIES and _is_create_race(error):
                time.sleep(0.05 * tries)
                continue
            raise LedgerUnavailable(location.display_url, _first_line(error)) from error
        return ledger
    raise AssertionError("unreachable")


_CREATE_TRIES = 5


def _is_create_race(error: BaseException) -> bool:
    text = str(error)
    return "concurrently" in text or "pg_type_typname_nsp_index" in text


@contextlib.contextmanager
def opened(location: LedgerLocation | None = None) -> Iterator[Ledger]:
    ledger = open_ledger(location)
    try:
        yield ledger
    finally:
        ledger.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
