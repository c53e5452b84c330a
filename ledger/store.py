"""The event store: the `eventsourcing` library's application and recorders.

One connection string (LEDGER_URL) chooses SQLite, the embedded default,
or PostgreSQL. Either way the ledger is a store of its own, never a table
inside a job's output, so an output failure cannot erase a resume marker.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    IntegrityError,
    PersistenceError,
    StoredEvent,
    Transcoder,
)
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder

from ledger import faults
from ledger.codec import OrjsonTranscoder
from ledger.config import LedgerLocation, parse_ledger_url
from ledger.errors import LedgerUnavailable

__all__ = [
    "AggregateNotFoundError",
    "IntegrityError",
    "Ledger",
    "open_ledger",
    "opened",
]

# The events table on PostgreSQL is named after this: `ledger_events`.
APPLICATION_NAME = "Ledger"


class Ledger(Application[UUID]):
    """The write side: aggregates are saved here, one transaction a save."""

    name = APPLICATION_NAME

    def construct_transcoder(self) -> Transcoder:
        return OrjsonTranscoder()


class _FaultySQLiteRecorder(SQLiteApplicationRecorder):
    """Lets a crash test die inside the insert transaction, before commit."""

    def _insert_events(
        self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        faults.hit("in_checkpoint")
        return ids


class _FaultyPostgresRecorder(PostgresApplicationRecorder):
    """Lets a crash test die inside the insert transaction, before commit."""

    def _insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        faults.hit("in_checkpoint")


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
        faulty: type = _FaultyPostgresRecorder
    else:
        assert location.sqlite_path is not None
        env.update(
            PERSISTENCE_MODULE="eventsourcing.sqlite",
            SQLITE_DBNAME=str(location.sqlite_path),
            SQLITE_LOCK_TIMEOUT="30",
        )
        faulty = _FaultySQLiteRecorder

    # The failpoint recorder is only wired in when a test arms a fault.
    if os.environ.get("LEDGER_FAULT"):
        env["APPLICATION_RECORDER_TOPIC"] = f"{faulty.__module__}:{faulty.__name__}"
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

    try:
        ledger = Ledger(env=store_env(location))
        ledger.recorder.max_notification_id()
    except (PersistenceError, OSError, sqlite3.Error, psycopg.Error) as error:
        raise LedgerUnavailable(location.display_url, _first_line(error)) from error
    return ledger


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
