"""A file job for the effect tests: one notification per line of input.

Each record's line is sent to a downstream through `context.effect`; the
downstream here is a text file that logs every call as `KEY LINE`, so a
test can count what a replay really sent. Parameters:

- `calls`: the file that logs the calls;
- `effect`: the effect the handler makes: `notify` (declared as honouring
  idempotency keys: the downstream would drop a repeated key), or
  `notify-plain` (declared as not honouring them); any other name is one
  the job does not declare.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ledger import Checkpoint, Job, Record, RunContext, Step
from ledger.effects import EffectPolicy
from ledger.lines import read_lines


class Send:
    name = "send"
    position_kind = "line"

    def __init__(self, path: Path, context: RunContext, calls: Path) -> None:
        self.path = path
        self.context = context
        self.calls = calls
        self.effect = str(context.params["effect"])

    def size(self) -> int | None:
        return None

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        return read_lines(self.path, after)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        def send(key: str) -> dict[str, str]:
            with self.calls.open("a") as log:
                log.write(f"{key} {record.data}\n")
            return {"sent": record.data}

        return self.context.effect(self.effect, record, send)

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        return len(outputs)


class NotifyJob(Job):
    name = "notify"
    version = "1"
    path_parameters: ClassVar[frozenset[str]] = frozenset({"calls"})
    parameters: ClassVar[dict[str, Any]] = {"calls": "calls.log", "effect": "notify"}
    effects: ClassVar[dict[str, EffectPolicy]] = {
        "notify": EffectPolicy(honours_keys=True),
        "notify-plain": EffectPolicy(honours_keys=False),
    }

    def open(self, context: RunContext) -> Sequence[Step]:
        calls = Path(context.params["calls"])
        return [Send(Path(context.input.path), context, calls)]


job = NotifyJob()
