"""A job for effect tests: invoices in a text file, each one charged and
announced on downstream HTTP services.

Each line of the input is an invoice amount in cents. Step `bill` makes two
effects for every record, through `context.effect`:

- `charge`, a POST to `charge_url`, whose service honours idempotency keys;
- `notify`, a POST to `notify_url`, whose service does not.

It stages (invoice, amount, the charge's answer); step `archive` stores the
staged rows in `invoices`. Both write with an upsert, so a replayed batch
leaves them once. A `notify` an operator confirmed by hand returns None on
replay (the ledger has no answer to give back), and the job needs none.
"""

from __future__ import annotations

import sqlite3
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson

from ledger import Checkpoint, InputError, Job, OutputLost, Record, RunContext, Step
from ledger.effects import EffectOutcomeUnknown, EffectPolicy
from ledger.lines import read_lines

# No proxy from the environment: the services are on 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

CALL_TIMEOUT_SECONDS = 30


def post(url: str, key: str, record: int, body: dict[str, Any]) -> Any:
    """One call to a service; a timeout after sending may have landed.
    `url` is http (checked when the job opens)."""
    request = urllib.request.Request(  # noqa: S310
        url,
        data=orjson.dumps(body),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "X-Record": str(record),
        },
    )
    try:
        with _OPENER.open(request, timeout=CALL_TIMEOUT_SECONDS) as answer:
            return orjson.loads(answer.read())
    except TimeoutError as error:
        raise EffectOutcomeUnknown(f"no answer from {url}: {error}") from error


class Bill:
    name = "bill"
    position_kind = "line"

    def __init__(self, path: Path, job: InvoicesJob, context: RunContext) -> None:
        self.path = path
        self.job = job
        self.context = context

    def size(self) -> int | None:
        return None

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        return read_lines(self.path, after)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        amount = int(record.data)
        params = self.context.params
        body = {"invoice": record.number, "amount": amount}
        charged = self.context.effect(
            "charge",
            record,
            lambda key: post(params["charge_url"], key, record.number, body),
        )
        self.context.effect(
            "notify",
            record,
            lambda key: post(params["notify_url"], key, record.number, body),
        )
        counters["billed"] += 1
        return {"invoice": record.number, "amount": amount, "charge": charged}

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        with self.job.db:
            self.job.db.executemany(
                "INSERT OR REPLACE INTO staged VALUES (?, ?)",
                [(record.number, orjson.dumps(row)) for record, row in outputs],
            )
        return len(outputs)

    def verify(self, written: int) -> None:
        self.job.verify(self.name, "staged", written)


class Archive:
    name = "archive"
    position_kind = "line"

    def __init__(self, job: InvoicesJob) -> None:
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
        return record.data

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        with self.job.db:
            self.job.db.executemany(
                "INSERT OR REPLACE INTO invoices VALUES (?, ?, ?)",
                [
                    (row["invoice"], row["amount"], orjson.dumps(row["charge"]))
                    for _, row in outputs
                ],
            )
        return len(outputs)

    def verify(self, written: int) -> None:
        self.job.verify(self.name, "invoices", written)


class InvoicesJob(Job):
    name = "invoices"
    version = "1"
    path_parameters: ClassVar[frozenset[str]] = frozenset({"output"})
    parameters: ClassVar[dict[str, Any]] = {
        "output": "invoices.sqlite",
        "charge_url": "",
        "notify_url": "",
    }
    effects: ClassVar[dict[str, EffectPolicy]] = {
        "charge": EffectPolicy(honours_keys=True, description="payment service"),
        "notify": EffectPolicy(honours_keys=False, description="mail service"),
    }

    def check_input(self, path: Path) -> None:
        text = path.read_text()
        if not all(line.strip().isdigit() for line in text.splitlines()):
            raise InputError(str(path), "has a line that is not cents", "fix it")

    def outputs(self, params: dict[str, Any]) -> list[Path]:
        return [Path(params["output"])]

    def open(self, context: RunContext) -> Sequence[Step]:
        for name in ("charge_url", "notify_url"):
            if not str(context.params[name]).startswith("http://"):
                raise InputError(
                    self.name,
                    f"has no http {name}",
                    f"pass --param {name}=http://HOST:PORT/PATH",
                )
        self.db = sqlite3.connect(context.params["output"])
        self.db.execute("CREATE TABLE IF NOT EXISTS staged (line PRIMARY KEY, row)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS invoices (invoice PRIMARY KEY, amount, charge)"
        )
        return [Bill(Path(context.input.path), self, context), Archive(self)]

    def verify(self, step: str, table: str, written: int) -> None:
        """Raises OutputLost when `table` holds fewer rows than `written`."""
        (found,) = self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        if found < written:
            raise OutputLost(step, f"table {table}", written, found)

    def close(self, context: RunContext, *, completed: bool) -> None:
        self.db.close()


job = InvoicesJob()
