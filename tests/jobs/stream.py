"""A consumer job for the tests: numbers from a topic into a SQLite sink.

Each message's value is JSON: `{"n": 7}`. The sink keys rows by (topic,
partition, offset) and counts deliveries, so a test can tell that a batch
was handled twice (deliveries > 1) and that the sink still holds it once.

Poison on demand, by the message's `poison` field:

- `raise`: the handler raises ValueError every time;
- `kill`: the handler kills its own process with SIGKILL;
- `stall`: the handler writes STREAM_STALL_FILE + ".reached" and waits
  until STREAM_STALL_FILE exists (only when STREAM_STALL_FILE is set);
- `flaky`: the handler raises ValueError while the file named by
  STREAM_FLAKY_FILE exists (so the consumer quarantines the message after
  its retries), and handles it as any other once the file is gone: a
  cause fixed, for a promotion to write the message.

Environment: STREAM_TOPIC, STREAM_GROUP, STREAM_SINK (required),
STREAM_BATCH (max records per batch, default 200), STREAM_SLOW_MS (time
each message takes, default 0), STREAM_MAX_CRASHES (the quarantine
policy's max_crashes, default 2), STREAM_ANNOUNCE_FILE (when set, each
message is also announced through the effect `announce`, whose downstream
honours keys: a line `KEY TOPIC PARTITION OFFSET` appended to that file
for every call).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from consumers import (
    ConsumerContext,
    ConsumerJob,
    Message,
    QuarantinePolicy,
    RetryPolicy,
)
from ledger import Reject
from ledger.effects import EffectPolicy


class StreamNumbers(ConsumerJob):
    name = "stream-numbers"
    version = "1"
    group_id = os.environ.get("STREAM_GROUP", "stream-numbers")
    topics = (os.environ.get("STREAM_TOPIC", "stream-numbers"),)
    batch_max_records = int(os.environ.get("STREAM_BATCH", "200"))
    batch_max_seconds = 0.3
    retry = RetryPolicy(attempts=3, backoff_seconds=0.01)
    quarantine = QuarantinePolicy(
        max_crashes=int(os.environ.get("STREAM_MAX_CRASHES", "2"))
    )
    parameters: ClassVar[dict[str, Any]] = {
        "sink": os.environ.get("STREAM_SINK", "stream-sink.sqlite")
    }
    sensitive_fields = frozenset({"secret"})
    effects: ClassVar[dict[str, EffectPolicy]] = {
        "announce": EffectPolicy(honours_keys=True)
    }

    def open(self, context: ConsumerContext) -> None:
        self.context = context
        self.announce = os.environ.get("STREAM_ANNOUNCE_FILE")
        self.slow = int(os.environ.get("STREAM_SLOW_MS", "0")) / 1000
        self.db = sqlite3.connect(context.params["sink"], isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS sink (topic TEXT, part INTEGER, "
            "off INTEGER, n INTEGER, deliveries INTEGER NOT NULL DEFAULT 1, "
            "PRIMARY KEY (topic, part, off))"
        )

    def handle(self, message: Message, counters: Counter[str]) -> Any:
        value = message.json()
        poison = value.get("poison")
        if poison == "raise":
            raise ValueError(f"poison message {value['n']}")
        flaky = os.environ.get("STREAM_FLAKY_FILE")
        if poison == "flaky" and flaky and Path(flaky).exists():
            raise ValueError(f"flaky message {value['n']}: {flaky} exists")
        if poison == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if poison == "reject":
            raise Reject("rejected", f"message {value['n']} is marked bad", value)
        if poison == "stall" and os.environ.get("STREAM_STALL_FILE"):
            release = Path(os.environ["STREAM_STALL_FILE"])
            release.with_suffix(".reached").write_text(str(message.offset))
            deadline = time.monotonic() + 120
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.slow:
            time.sleep(self.slow)
        counters["numbers"] += 1
        if self.announce:
            self.context.effect("announce", message, self._announcer(message))
        return int(value["n"])

    def _announcer(self, message: Message) -> Callable[[str], None]:
        def announce(key: str) -> None:
            with open(str(self.announce), "a") as calls:
                calls.write(
                    f"{key} {message.topic} {message.partition} {message.offset}\n"
                )

        return announce

    def write(self, outputs: Sequence[tuple[Message, Any]]) -> int:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO sink (topic, part, off, n) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (topic, part, off) DO UPDATE "
                "SET deliveries = deliveries + 1",
                [(m.topic, m.partition, m.offset, n) for m, n in outputs],
            )
        return len(outputs)

    def close(self) -> None:
        self.db.close()


job = StreamNumbers()
