"""A file job for the effect attack tests: one call per line, with tricks.

Each line is sent to a downstream that logs every call as `KEY LINE` in
the file `calls`, so a test can count what really reached it. What the
handler does is set by the `mode` parameter (the run's identity) and by
marker files in the working directory (what differs between attempts):

- `plain`: one effect `send` per record, made in `handle`;
- `unknown`: record `target` is sent, then the call raises
  EffectOutcomeUnknown (a timeout after sending) with `message` (where
  `<NUL>` stands for a NUL character), until the file `unknown.done`
  exists;
- `swallow`: the handler catches EffectUncertain and goes on;
- `write`: the effects are made in `write`, one per record of the batch;
- `twice`: two different calls for one record, same name, no `part`;
- `stop`: on record `target` of the first attempt (no `stopped.once`
  yet), the process stops itself (SIGSTOP) before the effect, then
  makes it when continued; later attempts wait at record `target` for
  the file `go` before theirs;
- `block`: after record `target`, waits for the file `go`;
- `part`: the effect's `part` is the line itself.

The policy of `send` comes from the environment (`ATTACK_HONOURS`, 1 or
0, default 1), so that it can change between attempts of one run.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ledger import Checkpoint, Job, Record, RunContext, Step
from ledger.effects import EffectOutcomeUnknown, EffectPolicy, EffectUncertain
from ledger.lines import read_lines

_WAIT_SECONDS = 120


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + _WAIT_SECONDS
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)


class Send:
    name = "send"
    position_kind = "line"

    def __init__(self, path: Path, context: RunContext) -> None:
        self.path = path
        self.context = context
        self.params = context.params
        self.calls = Path(str(context.params["calls"]))
        self.folder = self.calls.parent
        self.mode = str(context.params["mode"])
        self.target = int(context.params["target"])

    def size(self) -> int | None:
        return None

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        return read_lines(self.path, after)

    def _sender(self, record: Record, text: str) -> Any:
        def send(key: str) -> dict[str, Any]:
            with self.calls.open("a") as log:
                log.write(f"{key} {text} pid={os.getpid()}\n")
            unknown = self.mode == "unknown" and record.number == self.target
            if unknown and not (self.folder / "unknown.done").exists():
                raise EffectOutcomeUnknown(
                    str(self.params["message"]).replace("<NUL>", "\x00")
                )
            return {"sent": text}

        return send

    def _effect(self, record: Record, text: str | None = None, part: str = "") -> Any:
        text = record.data if text is None else text
        return self.context.effect("send", record, self._sender(record, text), part)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        if self.mode == "write":
            return record.data
        if self.mode == "stop" and record.number == self.target:
            marker = self.folder / "stopped.once"
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGSTOP)
            else:
                _wait_for(self.folder / "go")
        if self.mode == "swallow":
            try:
                return self._effect(record)
            except EffectUncertain:
                counters["swallowed"] += 1
                return None
        if self.mode == "twice":
            first = self._effect(record, f"{record.data} first")
            second = self._effect(record, f"{record.data} second")
            return [first, second]
        if self.mode == "part":
            return self._effect(record, part=record.data)
        sent = self._effect(record)
        if self.mode == "block" and record.number == self.target:
            (self.folder / "blocked").write_text(str(os.getpid()))
            _wait_for(self.folder / "go")
        return sent

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        if self.mode == "write":
            for record, _ in outputs:
                self._effect(record)
        return len(outputs)


class EffectsAttackJob(Job):
    name = "effects-attack"
    version = "1"
    path_parameters: ClassVar[frozenset[str]] = frozenset({"calls"})
    parameters: ClassVar[dict[str, Any]] = {
        "calls": "calls.log",
        "mode": "plain",
        "target": 3,
        "message": "timed out after sending",
    }
    effects: ClassVar[dict[str, EffectPolicy]] = {
        "send": EffectPolicy(honours_keys=os.environ.get("ATTACK_HONOURS", "1") == "1"),
    }

    def open(self, context: RunContext) -> Sequence[Step]:
        return [Send(Path(context.input.path), context)]


job = EffectsAttackJob()
