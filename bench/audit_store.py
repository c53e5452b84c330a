"""The 90-day ledger of `audit_queries.py`, made once and kept.

SQLite: the events are made by `audit_ledger.Generator` through the
library's event store into `bench/.cache/audit-ledger-N.sqlite`, then
the read tables are built by the product's own `ledger project`. A small
JSON file beside it says how it was made; a later run reuses the file
while that file agrees with it.

PostgreSQL: a database of its own on the given server
(`ledger_bench_audit_F_N`), kept between runs too. Its events are the
SQLite ledger's stored rows, byte for byte, copied with `COPY` in their
order (the chain hashes and timestamps come along; the server numbers
them again, in the same order); its read tables are then built by the
product's own `ledger project`, as on SQLite. Writing the same events
through the library's PostgreSQL recorder runs at about 10,000 events
a second here, so copying them saves some 8 minutes of a 5 million
event build and changes no byte of them.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from audit_ledger import DAYS, FIRST_DAY, Generator
from measure import CACHE, ledger_command, time_command

from ledger.config import parse_ledger_url
from ledger.store import open_ledger

__all__ = ["FORMAT", "Built", "postgres_ledger", "sqlite_ledger"]

# Bumped whenever the generator's events change, so that a cached ledger
# made by an older generator is never measured as this one's.
FORMAT = 2


@dataclass
class Built:
    """A ledger ready to measure, and how it was made."""

    store: str
    url: str
    events: int
    runs: int
    generation_s: float
    projection_s: float
    copy_s: float = 0.0
    reused: bool = False

    def as_dict(self) -> dict[str, Any]:
        shown = asdict(self)
        shown["url"] = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", self.url)
        return shown


def _project(url: str) -> float:
    """The product's own catch-up, from nothing; its wall seconds."""
    measured = time_command([ledger_command(), "--ledger-url", url, "project"])
    return measured.wall_s


def sqlite_ledger(target: int, echo: Callable[[str], None] = print) -> Built:
    path = CACHE / f"audit-ledger-{target}.sqlite"
    meta_path = path.with_suffix(".meta.json")
    cached = _cached_sqlite(path, meta_path, target)
    if cached is not None:
        return cached

    # Made aside and renamed at the end: an interrupted build never looks
    # like a finished one.
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)
    echo(f"making {target:,} events of {DAYS} days from {FIRST_DAY:%Y-%m-%d} ...")
    ledger = open_ledger(parse_ledger_url(f"sqlite:///{partial}"))
    started = time.perf_counter()
    try:
        generator = Generator(ledger, target)
        generator.write(echo)
    finally:
        ledger.close()
    generation = time.perf_counter() - started
    echo(f"  {generator.events:,} events in {generation:.0f} s; projecting ...")
    projection = _project(f"sqlite:///{partial}")
    with closing(sqlite3.connect(partial)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    partial.replace(path)
    for leftover in (Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    built = Built(
        "sqlite",
        f"sqlite:///{path}",
        generator.events,
        generator.runs,
        round(generation, 1),
        round(projection, 1),
    )
    meta = {"format": FORMAT, "target": target, **built.as_dict()}
    meta_path.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return built


def _cached_sqlite(path: Path, meta_path: Path, target: int) -> Built | None:
    if not (path.is_file() and meta_path.is_file()):
        return None
    meta = orjson.loads(meta_path.read_bytes())
    if meta.get("format") != FORMAT or meta.get("target") != target:
        return None
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        events = conn.execute("SELECT MAX(rowid) FROM stored_events").fetchone()[0]
        applied = conn.execute("SELECT MAX(last_id) FROM proj_position").fetchone()[0]
    if events != meta["events"] or applied != events:
        return None
    return Built(
        "sqlite",
        f"sqlite:///{path}",
        meta["events"],
        meta["runs"],
        meta["generation_s"],
        meta["projection_s"],
        reused=True,
    )


def postgres_ledger(
    server_url: str, source: Built, echo: Callable[[str], None] = print
) -> Built:
    """The SQLite ledger's events on PostgreSQL, with their read tables."""
    import psycopg

    name = f"ledger_bench_audit_{FORMAT}_{source.events}"
    url = f"{server_url.rsplit('/', 1)[0]}/{name}"
    cached = _cached_postgres(server_url, url, name, source)
    if cached is not None:
        return cached

    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    open_ledger(parse_ledger_url(url)).close()

    echo(f"copying {source.events:,} events to PostgreSQL database {name} ...")
    started = time.perf_counter()
    path = source.url.removeprefix("sqlite:///")
    with (
        closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as rows,
        psycopg.connect(url) as conn,
        conn.cursor() as cursor,
        cursor.copy(
            "COPY ledger_events (originator_id, originator_version, topic, state) "
            "FROM STDIN"
        ) as copy,
    ):
        for row in rows.execute(
            "SELECT originator_id, originator_version, topic, state "
            "FROM stored_events ORDER BY rowid"
        ):
            copy.write_row((UUID(row[0]), row[1], row[2], row[3]))
    copied = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE ledger_events")
    echo(f"  copied in {copied:.0f} s; projecting (the product's catch-up) ...")
    projection = _project(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    built = Built(
        "postgresql",
        url,
        source.events,
        source.runs,
        source.generation_s,
        round(projection, 1),
        round(copied, 1),
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_meta (meta TEXT NOT NULL)")
        meta = {"format": FORMAT, **built.as_dict()}
        conn.execute(
            "INSERT INTO bench_meta VALUES (%s)", (orjson.dumps(meta).decode(),)
        )
    return built


def _cached_postgres(
    server_url: str, url: str, name: str, source: Built
) -> Built | None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as admin:
        found = admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    if found is None:
        return None
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('bench_meta')").fetchone() == (None,):
            return None
        [[text]] = conn.execute("SELECT meta FROM bench_meta").fetchall()
        events = conn.execute("SELECT MAX(notification_id) FROM ledger_events")
        [[last]] = events.fetchall()
        [[applied]] = conn.execute("SELECT MAX(last_id) FROM proj_position").fetchall()
    meta = orjson.loads(text)
    if meta.get("format") != FORMAT or meta["events"] != source.events:
        return None
    if last != source.events or applied != last:
        return None
    return Built(
        "postgresql",
        url,
        meta["events"],
        meta["runs"],
        meta["generation_s"],
        meta["projection_s"],
        meta["copy_s"],
        reused=True,
    )
