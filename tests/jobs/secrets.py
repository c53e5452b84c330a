"""A file job for the secrets tests: JSON rows full of secrets, and failures.

Each line of input is a JSON object. By its `action`:

- `reject`: the row is quarantined, its detail quoting the whole row;
- `notify`: an effect is made whose result quotes the row's secrets;
- `fail`: an effect is made that raises with the row's secrets in its
  message; the handler then raises with the whole row printed in its
  message, so the step fails;
- anything else: the row is loaded.

Its own redaction adds a field (`api_key`) and a path (`account.pin`)
to the ledger-wide policy. Parameter `dsn` is recorded with the run, so
a URL with a password in it is one more secret to find.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ledger import Checkpoint, Job, Record, Redaction, Reject, RunContext, Step
from ledger.effects import EffectPolicy
from ledger.lines import read_lines


class Load:
    name = "load"
    position_kind = "line"

    def __init__(self, path: Path, context: RunContext) -> None:
        self.path = path
        self.context = context
        self.loaded = 0

    def size(self) -> int | None:
        return None

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        return read_lines(self.path, after)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        row = json.loads(record.data)
        action = row.get("action")
        if action == "reject":
            raise Reject("bad-row", f"row {record.number} is bad: {row}", row)
        if action == "notify":
            return self.context.effect("notify", record, lambda key: _receipt(row))
        if action == "fail":
            try:
                self.context.effect("notify", record, lambda key: _refuse(row))
            except RuntimeError as error:
                raise ValueError(f"cannot load row {row}: {error}") from error
        counters["loaded"] += 1
        return row

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        self.loaded += len(outputs)
        return len(outputs)


def _receipt(row: dict[str, Any]) -> dict[str, Any]:
    return {"sent_to": row["email"], "card": row["card"], "auth": row["auth"]}


def _refuse(row: dict[str, Any]) -> None:
    raise RuntimeError(
        f"downstream {row['callback']} refused {row['email']} "
        f"(Authorization: {row['auth']}, card {row['card']})"
    )


class SecretsJob(Job):
    name = "secrets-import"
    version = "1"
    parameters: ClassVar[dict[str, Any]] = {"dsn": ""}
    redaction: ClassVar[Redaction] = Redaction(
        fields={"api_key"}, paths=["account.pin"], builtins=()
    )
    effects: ClassVar[dict[str, EffectPolicy]] = {
        "notify": EffectPolicy(honours_keys=True)
    }

    def open(self, context: RunContext) -> Sequence[Step]:
        return [Load(Path(context.input.path), context)]


job = SecretsJob()
