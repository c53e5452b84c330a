"""The read side's two databases behind one small async interface.

SQLite (the embedded default) is driven through the standard library; its
calls are quick local reads, so they run inline. PostgreSQL is driven
through asyncpg. Queries are written once, with `$1`-style parameters.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

__all__ = ["PostgresDatabase", "ReadDatabase", "SQLiteDatabase", "StoredRow"]

# One lock key for every process that projects this ledger on PostgreSQL.
_ADVISORY_LOCK_KEY = 0x1ED6E5


StoredRow = tuple[int, str, str, bytes]


class ReadDatabase(Protocol):
    kind: str

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]: ...

    async def execute(self, sql: str, *args: Any) -> None: ...

    def writing(self) -> Any:
        """An async context: one transaction, exclusive among projectors."""
        ...

    async def has_events_table(self) -> bool: ...

    async def has_table(self, name: str) -> bool: ...

    async def columns(self, table: str) -> set[str]: ...

    async def max_event_id(self) -> int: ...

    async def events_after(self, last_id: int, limit: int) -> list[StoredRow]: ...

    async def count_events_after(self, last_id: int) -> int:
        """How many events the log holds after `last_id` (ids can have gaps,
        so this is a count, not a difference of ids)."""
        ...

    async def close(self) -> None: ...


_PARAM = re.compile(r"\$(\d+)")


def _to_sqlite(sql: str) -> str:
    return _PARAM.sub(r"?\1", sql)


def _dashed(hex_id: str) -> str:
    if len(hex_id) != 32:
        return str(UUID(hex_id))
    h = hex_id.lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class SQLiteDatabase:
    kind = "sqlite"

    def __init__(
        self, path: Path, events_table: str, busy_timeout: float = 5.0
    ) -> None:
        self.events_table = events_table
        # A read command waits a few seconds for a busy writer, then answers
        # from the tables as they are; the follower waits as long as needed.
        self.conn = sqlite3.connect(
            path, isolation_level=None, timeout=busy_timeout, check_same_thread=False
        )
        self.conn.row_factory = sqlite3.Row
        self._statements: dict[str, str] = {}

    def _sql(self, sql: str) -> str:
        converted = self._statements.get(sql)
        if converted is None:
            converted = self._statements[sql] = _to_sqlite(sql)
        return converted

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in self.conn.execute(self._sql(sql), args)]

    async def execute(self, sql: str, *args: Any) -> None:
        self.conn.execute(self._sql(sql), args)

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[SQLiteDatabase]:
        # IMMEDIATE takes the write lock up front, so two projectors cannot
        # both read the same position and apply the same events.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    async def has_events_table(self) -> bool:
        return self._has_events_table()

    async def has_table(self, name: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    async def columns(self, table: str) -> set[str]:
        rows = self.conn.execute("SELECT name FROM pragma_table_info(?)", (table,))
        return {str(row[0]) for row in rows}

    def _has_events_table(self) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
            (self.events_table,),
        ).fetchone()
        return row is not None

    async def max_event_id(self) -> int:
        if not self._has_events_table():
            return 0
        row = self.conn.execute(f"SELECT MAX(rowid) FROM {self.events_table}")
        return int(row.fetchone()[0] or 0)

    async def events_after(self, last_id: int, limit: int) -> list[StoredRow]:
        if not self._has_events_table():
            return []
        rows = self.conn.execute(
            f"SELECT rowid, originator_id, topic, state FROM {self.events_table} "
            "WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (last_id, limit),
        )
        # The library stores ids as bare hex on SQLite; slicing gives the
        # dashed form without building a UUID per event.
        return [(r[0], _dashed(r[1]), r[2], r[3]) for r in rows]

    async def count_events_after(self, last_id: int) -> int:
        if not self._has_events_table():
            return 0
        row = self.conn.execute(
            f"SELECT COUNT(*) FROM {self.events_table} WHERE rowid > ?", (last_id,)
        )
        return int(row.fetchone()[0])

    async def close(self) -> None:
        self.conn.close()


def _storable(args: Sequence[Any]) -> tuple[Any, ...]:
    """The arguments with NUL characters shown as U+FFFD: PostgreSQL's text
    refuses NUL, and one event carrying it (an error message, a payload)
    would otherwise stop the read side for good. The event itself keeps it."""
    return tuple(
        value.replace("\x00", "\ufffd") if isinstance(value, str) else value
        for value in args
    )


class PostgresDatabase:
    kind = "postgresql"

    def __init__(self, conn: Any, events_table: str) -> None:
        self.conn = conn
        self.events_table = events_table

    @classmethod
    async def connect(cls, dsn: str, events_table: str) -> PostgresDatabase:
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=5)
        return cls(conn, events_table)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in await self.conn.fetch(sql, *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        await self.conn.execute(sql, *_storable(args))

    async def execute_many(self, sql: str, args: Sequence[tuple[Any, ...]]) -> None:
        await self.conn.executemany(sql, [_storable(row) for row in args])

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[PostgresDatabase]:
        async with self.conn.transaction():
            await self.conn.execute(
                "SELECT pg_advisory_xact_lock($1)", _ADVISORY_LOCK_KEY
            )
            yield self

    async def has_events_table(self) -> bool:
        return await self.has_table(self.events_table)

    async def has_table(self, name: str) -> bool:
        found = await self.conn.fetchval("SELECT to_regclass($1)", name)
        return found is not None

    async def columns(self, table: str) -> set[str]:
        rows = await self.conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) "
            "AND attnum > 0 AND NOT attisdropped",
            table,
        )
        return {str(row[0]) for row in rows}

    async def max_event_id(self) -> int:
        value = await self.conn.fetchval(
            f"SELECT MAX(notification_id) FROM {self.events_table}"
        )
        return int(value or 0)

    async def events_after(self, last_id: int, limit: int) -> list[StoredRow]:
        rows = await self.conn.fetch(
            "SELECT notification_id, originator_id::text, topic, state "
            f"FROM {self.events_table} WHERE notification_id > $1 "
            "ORDER BY notification_id LIMIT $2",
            last_id,
            limit,
        )
        return [(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    async def count_events_after(self, last_id: int) -> int:
        value = await self.conn.fetchval(
            f"SELECT COUNT(*) FROM {self.events_table} WHERE notification_id > $1",
            last_id,
        )
        return int(value or 0)

    async def close(self) -> None:
        await self.conn.close()
