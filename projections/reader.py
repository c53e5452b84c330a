"""The read side for a long-running process: many reads, few connections.

A read command opens the ledger, catches up and closes it again; a server
answering many requests keeps what it can open. On PostgreSQL that is a
small asyncpg pool, opened on the first read (so the server starts while
the database is still down) and drawn from per read. On SQLite each read
opens the file in a worker thread, which costs microseconds and keeps the
server's event loop free while a job's writer holds the ledger.

Each read may catch the read tables up first, exactly as a read command
does: under the projectors' lock (PostgreSQL's advisory lock, SQLite's
write lock), so a server, `ledger project --follow` and read commands can
run side by side without applying an event twice.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from ledger.config import LedgerLocation
from ledger.errors import LedgerNotCreated, LedgerUnavailable
from projections.access import open_read_database
from projections.database import PostgresDatabase, ReadDatabase
from projections.runner import catch_up

__all__ = ["SharedReader"]

T = TypeVar("T")

log = structlog.get_logger(__name__)

# Enough for a handful of concurrent requests; each read holds a connection
# only for its few queries.
_POOL_SIZE = 4

# How long a read waits for a pooled connection, or for a new one.
_CONNECT_SECONDS = 5.0

_NOT_CREATED_FIX = (
    "run a job first with `ledger run`, or point LEDGER_URL at the ledger"
)


class SharedReader:
    """Answers read queries against one ledger for as long as it lives."""

    def __init__(
        self, location: LedgerLocation, *, pool_size: int = _POOL_SIZE
    ) -> None:
        self.location = location
        self._pool_size = pool_size
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()

    async def read(
        self,
        query: Callable[[ReadDatabase], Awaitable[T]],
        *,
        up_to_date: bool = True,
    ) -> T:
        """Answers `query`, after catching the read tables up if asked."""
        if self.location.is_postgres:
            return await self._read_postgres(query, up_to_date)
        return await asyncio.to_thread(self._read_sqlite, query, up_to_date)

    async def close(self) -> None:
        async with self._pool_lock:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None

    def _read_sqlite(
        self, query: Callable[[ReadDatabase], Awaitable[T]], up_to_date: bool
    ) -> T:
        async def work() -> T:
            db = await open_read_database(self.location)
            try:
                if up_to_date:
                    await _catch_up_unless_busy(db)
                return await query(db)
            finally:
                await db.close()

        try:
            return asyncio.run(work())
        except sqlite3.DatabaseError as error:
            raise LedgerUnavailable(
                self.location.display_url,
                str(error),
                "check LEDGER_URL names a ledger file the server can write "
                "(the read tables live in it)",
            ) from error

    async def _read_postgres(
        self, query: Callable[[ReadDatabase], Awaitable[T]], up_to_date: bool
    ) -> T:
        import asyncpg

        pool = await self._open_pool()
        try:
            async with pool.acquire(timeout=_CONNECT_SECONDS) as conn:
                db = PostgresDatabase(conn, self.location.events_table)

                # A database with no events table is not a ledger yet.
                if not await db.has_events_table():
                    raise LedgerNotCreated(
                        self.location.display_url,
                        "it holds no ledger yet",
                        _NOT_CREATED_FIX,
                    )
                if up_to_date:
                    await catch_up(db)
                return await query(db)
        except (
            OSError,
            TimeoutError,
            asyncpg.InterfaceError,
            asyncpg.InvalidAuthorizationSpecificationError,
            asyncpg.InvalidCatalogNameError,
            asyncpg.PostgresConnectionError,
            asyncpg.OperatorInterventionError,
            asyncpg.InsufficientResourcesError,
        ) as error:
            # Refused, dropped, shut down or timed out; or a URL that names
            # no database or a wrong password. The next read tries again.
            raise LedgerUnavailable(
                self.location.display_url, _first_line(error)
            ) from error

    async def _open_pool(self) -> Any:
        import asyncpg

        async with self._pool_lock:
            if self._pool is None:
                # No connection is made here: the first read makes one, so
                # a server can start before its database does.
                self._pool = await asyncpg.create_pool(
                    self.location.asyncpg_dsn(),
                    min_size=0,
                    max_size=self._pool_size,
                    timeout=_CONNECT_SECONDS,
                )
            return self._pool


async def _catch_up_unless_busy(db: ReadDatabase) -> None:
    """Catches up; a writer holding the ledger past the busy timeout means
    this answer is from the tables as they are, not an error."""
    try:
        await catch_up(db)
    except sqlite3.OperationalError as error:
        if "locked" not in str(error):
            raise
        log.warning("read_tables_behind", reason="the ledger is busy")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
