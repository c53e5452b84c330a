"""A small job for tests: numbers in a text file, doubled, then stored.

Parameters steer failures so tests can make a run fail, hang or succeed
with the same input version:

- `fail_marker`: while this file exists, step `fail_step` raises at batch
  `fail_batch` (the parameters stay the same when the file is removed, so
  the next run resumes the same run);
- `hold_marker`: while this file exists, the first batch of `store` waits
  (up to 60 s) so a test can observe a live worker holding the run;
- `record_ms`: each record of `store` takes this long, so a test can act
  on a worker in the middle of its batches;
- `lenient_marker`: while this file exists, `double` reads a line `xN`
  (which it otherwise rejects as not_a_number) as N: it stands for "the
  cause was fixed", so that a promoted record can be written.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ledger import Checkpoint, InputError, Job, Record, Reject, RunContext, Step
from ledger.lines import read_lines


class Double:
    name = "double"
    position_kind = "line"

    def __init__(self, path: Path, job: NumbersJob) -> None:
        self.path = path
        self.job = job
        self.rows: dict[int, int] = job.staged

    def size(self) -> int | None:
        return None

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        return read_lines(self.path, after)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        self.job.maybe_fail(self.name)
        text = record.data
        if self.job.lenient() and text.startswith("x"):
            text = text[1:]
        try:
            value = int(text)
        except ValueError:
            raise Reject("not_a_number", f"{record.data!r}", record.data) from None
        if value < 0:
            counters["negative"] += 1
        return value * 2

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        with self.job.db:
            self.job.db.executemany(
                "INSERT OR REPLACE INTO staged VALUES (?, ?)",
                [(record.number, value) for record, value in outputs],
            )
        return len(outputs)


class Store:
    name = "store"
    position_kind = "line"

    def __init__(self, job: NumbersJob) -> None:
        self.job = job

    def size(self) -> int | None:
        return None

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        start = after.position if after else 0
        rows = self.job.db.execute(
            "SELECT line, value FROM staged WHERE line > ? ORDER BY line", (start,)
        ).fetchall()
        for line, value in rows:
            yield Record(number=line, position=line, data=value)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        self.job.maybe_fail(self.name)
        self.job.maybe_hold()
        time.sleep(float(self.job.params["record_ms"]) / 1000)
        return record.data

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        with self.job.db:
            self.job.db.executemany(
                "INSERT OR REPLACE INTO result VALUES (?, ?)",
                [(record.number, value) for record, value in outputs],
            )
        return len(outputs)


class NumbersJob(Job):
    name = "numbers"
    version = "1"
    path_parameters: ClassVar[frozenset[str]] = frozenset({"output"})
    parameters: ClassVar[dict[str, Any]] = {
        "output": "numbers.sqlite",
        "fail_marker": "",
        "fail_step": "store",
        "fail_batch": 1,
        "hold_marker": "",
        "record_ms": 0,
        "lenient_marker": "",
    }

    def check_input(self, path: Path) -> None:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise InputError(
                str(path), "is not UTF-8 text", "pass a file of numbers"
            ) from None
        if not text.strip():
            raise InputError(str(path), "is empty", "pass a file of numbers")

    def outputs(self, params: dict[str, Any]) -> list[Path]:
        return [Path(params["output"])]

    def open(self, context: RunContext) -> Sequence[Step]:
        self.params = context.params
        self.batch_size = int(context.params["batch_size"])
        self.db = sqlite3.connect(context.params["output"])
        self.db.execute("CREATE TABLE IF NOT EXISTS staged (line PRIMARY KEY, value)")
        self.db.execute("CREATE TABLE IF NOT EXISTS result (line PRIMARY KEY, value)")
        self.staged: dict[int, int] = {}
        self.handled: Counter[str] = Counter()
        return [Double(Path(context.input.path), self), Store(self)]

    def maybe_fail(self, step: str) -> None:
        self.handled[step] += 1
        marker = self.params["fail_marker"]
        if not marker or step != self.params["fail_step"]:
            return
        batch = (self.handled[step] - 1) // self.batch_size
        if Path(marker).exists() and batch >= int(self.params["fail_batch"]):
            raise RuntimeError(f"planted failure in {step}")

    def lenient(self) -> bool:
        marker = self.params["lenient_marker"]
        return bool(marker) and Path(marker).exists()

    def maybe_hold(self) -> None:
        marker = self.params["hold_marker"]
        deadline = time.monotonic() + 60
        while marker and Path(marker).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self, context: RunContext, *, completed: bool) -> None:
        self.db.close()


job = NumbersJob()
