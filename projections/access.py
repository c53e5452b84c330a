"""Opening the read side of a ledger, for SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from ledger.config import LedgerLocation
from ledger.errors import LedgerNotCreated, LedgerUnavailable
from projections.database import PostgresDatabase, ReadDatabase, SQLiteDatabase
from projections.runner import catch_up

__all__ = ["catch_up_quietly", "open_read_database", "read"]

T = TypeVar("T")


async def _catch_up_unless_busy(db: ReadDatabase) -> None:
    """Catches up; if a writer holds the ledger too long, answers from the
    tables as they are and says so, rather than failing the read."""
    try:
        await catch_up(db)
    except sqlite3.OperationalError as error:
        if "locked" not in str(error):
            raise
        click.echo(
            "warning: the ledger is busy; this answer may miss its newest "
            "events (run `ledger project` to catch up)",
            err=True,
        )


def catch_up_quietly(location: LedgerLocation) -> None:
    """Brings the read tables up to date after a run, best effort: a later
    read command catches up anyway if this cannot."""
    with contextlib.suppress(LedgerUnavailable, sqlite3.Error, OSError):
        read(location, _nothing)


async def _nothing(db: ReadDatabase) -> None:
    return None


async def open_read_database(location: LedgerLocation) -> ReadDatabase:
    """Connects to the ledger's read side; never creates a ledger."""
    table = location.events_table
    if location.sqlite_path is not None:
        # A read command on a path with no ledger is almost always a typo in
        # LEDGER_URL or the wrong folder; creating an empty one would hide it.
        if not location.sqlite_path.is_file():
            raise LedgerNotCreated(
                location.url,
                f"no ledger file at {location.sqlite_path} (from {os.getcwd()})",
                "run a job first with `ledger run`, or point LEDGER_URL at the ledger",
            )
        try:
            db: ReadDatabase = SQLiteDatabase(location.sqlite_path, table)
            await db.has_events_table()
        except sqlite3.DatabaseError as error:
            raise LedgerUnavailable(
                location.url, str(error), "check LEDGER_URL names a ledger file"
            ) from error
    else:
        db = await _connect_postgres(location, table)

    # A store with no events table is not a ledger yet (or is being created
    # right now); reading it must not race its creation.
    if not await db.has_events_table():
        await db.close()
        raise LedgerNotCreated(
            location.display_url,
            "it holds no ledger yet",
            "run a job first with `ledger run`, or point LEDGER_URL at the ledger",
        )
    return db


async def _connect_postgres(location: LedgerLocation, table: str) -> ReadDatabase:
    try:
        return await PostgresDatabase.connect(location.asyncpg_dsn(), table)
    except (OSError, TimeoutError) as error:
        raise LedgerUnavailable(
            location.display_url, str(error) or "timeout"
        ) from error
    except Exception as error:
        # asyncpg raises its own classes for refused logins and missing
        # databases; they all mean the URL cannot be used as given.
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LedgerUnavailable(location.display_url, reason) from error


def read(location: LedgerLocation, query: Callable[[ReadDatabase], Awaitable[T]]) -> T:
    """Catches the read tables up with the log, then answers the query."""

    async def run() -> T:
        db = await open_read_database(location)
        try:
            await _catch_up_unless_busy(db)
            return await query(db)
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except sqlite3.DatabaseError as error:
        raise LedgerUnavailable(
            location.display_url,
            str(error),
            "check LEDGER_URL names a ledger file; the read tables live in it, "
            "so a read-only ledger must be copied somewhere writable first",
        ) from error
