"""A job for sealed-payload tests: accounts with card numbers, in two steps.

Each input line is JSON: `{"id": 1, "name": "Ada", "card": "4111..."}`.
Step `parse` stages every account in the output's `staged` table; step
`check` refuses an account whose card starts with `bad` (Reject
`bad_card`, its payload the whole account, card included) and stores the
others in `accounts`. `card` is a sensitive field, so a quarantined
account's preview never holds it.

The staging is dropped once a run completes, so a promotion of a record
`check` refused finds its source gone: only its sealed payload can stand
in for it. While the file named by `lenient_marker` exists, `check`
accepts every card (the cause fixed), so a promoted record is written.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson

from ledger import Checkpoint, InputError, Job, Record, Reject, RunContext, Step
from ledger.lines import read_lines


class Parse:
    name = "parse"
    position_kind = "line"

    def __init__(self, path: Path, job: AccountsJob) -> None:
        self.path = path
        self.job = job

    def size(self) -> int | None:
        return None

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        return read_lines(self.path, after)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        return orjson.loads(record.data)

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        with self.job.db:
            self.job.db.executemany(
                "INSERT OR REPLACE INTO staged VALUES (?, ?)",
                [(record.number, orjson.dumps(row)) for record, row in outputs],
            )
        return len(outputs)


class Check:
    name = "check"
    position_kind = "line"

    def __init__(self, job: AccountsJob) -> None:
        self.job = job

    def size(self) -> int | None:
        return None

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        start = after.position if after else 0
        rows = self.job.db.execute(
            "SELECT line, row FROM staged WHERE line > ? ORDER BY line", (start,)
        ).fetchall()
        for line, row in rows:
            yield Record(number=line, position=line, data=orjson.loads(row))

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        account = record.data
        if str(account["card"]).startswith("bad") and not self.job.lenient():
            raise Reject(
                "bad_card", f"account {account['id']} has a refused card", account
            )
        return account

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        with self.job.db:
            self.job.db.executemany(
                "INSERT OR REPLACE INTO accounts VALUES (?, ?, ?)",
                [(row["id"], row["name"], row["card"]) for _, row in outputs],
            )
        return len(outputs)


class AccountsJob(Job):
    name = "accounts"
    version = "1"
    path_parameters: ClassVar[frozenset[str]] = frozenset({"output"})
    parameters: ClassVar[dict[str, Any]] = {
        "output": "accounts.sqlite",
        "lenient_marker": "",
    }
    sensitive_fields = frozenset({"card"})

    def check_input(self, path: Path) -> None:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError:
                raise InputError(
                    str(path), f"line {number} is not JSON", "pass JSON lines"
                ) from None

    def outputs(self, params: dict[str, Any]) -> list[Path]:
        return [Path(params["output"])]

    def open(self, context: RunContext) -> Sequence[Step]:
        self.params = context.params
        self.db = sqlite3.connect(context.params["output"])
        self.db.execute("CREATE TABLE IF NOT EXISTS staged (line PRIMARY KEY, row)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS accounts (id PRIMARY KEY, name, card)"
        )
        return [Parse(Path(context.input.path), self), Check(self)]

    def lenient(self) -> bool:
        marker = self.params["lenient_marker"]
        return bool(marker) and Path(marker).exists()

    def close(self, context: RunContext, *, completed: bool) -> None:
        # A completed run keeps no staging: its source is gone for good.
        if completed:
            self.db.execute("DELETE FROM staged")
            self.db.commit()
        self.db.close()


job = AccountsJob()
