"""Following the event log into the read tables.

Each pass reads the events after the stored position, applies them, and
moves the position, all in one transaction; a crash mid-pass leaves the
tables and the position as they were. Notification ids can have gaps
(rolled-back inserts), so the position is "greater than the last id seen",
never a count. On PostgreSQL the library's table lock commits ids in id
order, so reading past the last id never skips a later-committing event.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable

import orjson

from projections.database import ReadDatabase
from projections.projector import statements_for
from projections.tables import ADDED_COLUMNS, DDL, PROJECTION_NAME, TABLES, UPGRADES

__all__ = ["catch_up", "ensure_tables", "follow_loop", "position", "rebuild"]

PASS_SIZE = 2000


async def ensure_tables(db: ReadDatabase) -> None:
    """Creates the read tables once; a plain read when they exist, so that
    a read command never waits for the write lock just to look. A ledger
    made before the newest table (the last of TABLES) gets it here; the
    events it projects are newer than that table, so no rebuild is needed."""
    if await db.has_table("proj_position") and await db.has_table(TABLES[-1]):
        await _add_missing_columns(db)
        return
    async with db.writing():
        for statement in DDL:
            await db.execute(statement)


async def _add_missing_columns(db: ReadDatabase) -> None:
    """Upgrades read tables made by an older ledger, in place: adding a
    column is instant, where a rebuild would replay the whole log."""
    tables = {table for table, _, _ in ADDED_COLUMNS}
    if not await _missing_columns(db, tables):
        return

    # Checked again under the lock: another process may have done it.
    async with db.writing():
        missing = await _missing_columns(db, tables)
        for table, column, kind in missing:
            await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        if missing:
            for statement in UPGRADES:
                await db.execute(statement)


async def _missing_columns(
    db: ReadDatabase, tables: set[str]
) -> list[tuple[str, str, str]]:
    present = {table: await db.columns(table) for table in sorted(tables)}
    return [item for item in ADDED_COLUMNS if item[1] not in present[item[0]]]


async def position(db: ReadDatabase) -> int:
    rows = await db.fetch(
        "SELECT last_id FROM proj_position WHERE name = $1", PROJECTION_NAME
    )
    return int(rows[0]["last_id"]) if rows else 0


async def catch_up(db: ReadDatabase, *, pass_size: int = PASS_SIZE) -> int:
    """Applies every event not yet projected; returns how many were read."""
    await ensure_tables(db)
    applied = 0
    while True:
        # Cheap check outside any write lock: most reads find nothing new.
        if await db.max_event_id() <= await position(db):
            return applied

        async with db.writing():
            last = await position(db)
            rows = await db.events_after(last, pass_size)
            if not rows:
                return applied
            for _, run_id, topic, state in rows:
                for sql, args in statements_for(run_id, topic, orjson.loads(state)):
                    await db.execute(sql, *args)
            await db.execute(
                "INSERT INTO proj_position (name, last_id) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id",
                PROJECTION_NAME,
                rows[-1][0],
            )
        applied += len(rows)


async def rebuild(db: ReadDatabase) -> int:
    """Drops the read tables and projects the whole log again."""
    async with db.writing():
        for table in TABLES:
            await db.execute(f"DROP TABLE IF EXISTS {table}")
    return await catch_up(db)


async def follow_loop(
    db: ReadDatabase,
    *,
    interval: float = 0.5,
    on_pass: Callable[[int, int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Keeps the read tables current until `stop` is set."""
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            applied = await catch_up(db)
        except sqlite3.OperationalError as error:
            # A writer held the ledger past the busy timeout: try next pass.
            if "locked" not in str(error):
                raise
            applied = 0
        if on_pass is not None:
            on_pass(applied, await position(db))
        if applied == 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
