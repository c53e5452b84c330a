"""Enrich flights that arrive on a Kafka topic, with the file import's code.

Two halves:

- `python examples/flights_consumer.py publish` replays the NYC 2013
  flights rows (the same `flights.csv.zip` the file import reads) into a
  topic, one CSV line per message;
- `ledger consume examples/flights_consumer.py` parses and enriches each
  message with `parse_row` and `enrich_row` from `examples/flights.py`, and
  writes the result to a SQLite sink keyed by (topic, partition, offset),
  so a batch handled twice leaves each row once.

Rows the file import would quarantine (malformed, incomplete) are
quarantined here too, and copied to the `flights.quarantine` topic.

Environment: FLIGHTS_TOPIC (default `flights`), FLIGHTS_GROUP
(`flights-enrich`), FLIGHTS_SINK (`out/flights-stream.sqlite`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import os
import sqlite3
import sys
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import orjson

from consumers import ConsumerContext, ConsumerJob, Message


def _sibling(name: str) -> ModuleType:
    """The file import's module, loaded by path: examples/ is no package."""
    qualified = f"_ledger_example_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(
        qualified, Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


flights = _sibling("flights")

SINK_COLUMNS = (
    "year", "month", "day", "dep_time", "dep_delay", "arr_time", "arr_delay",
    "carrier", "flight", "tailnum", "origin", "dest", "air_time", "distance",
    "time_hour", "cancelled", "delay_category", "plane_manufacturer",
    "plane_model", "plane_year",
)  # fmt: skip


class Sink:
    """The enriched rows, keyed by where each message was read."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        columns = ", ".join(SINK_COLUMNS)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS flights_stream (topic TEXT NOT NULL, "
            f"partition INTEGER NOT NULL, offset INTEGER NOT NULL, {columns}, "
            "PRIMARY KEY (topic, partition, offset))"
        )

    def upsert(self, rows: list[tuple[Any, ...]]) -> None:
        names = ("topic", "partition", "offset", *SINK_COLUMNS)
        marks = ", ".join("?" for _ in names)
        updates = ", ".join(f"{n} = excluded.{n}" for n in SINK_COLUMNS)
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                f"INSERT INTO flights_stream ({', '.join(names)}) VALUES ({marks}) "
                f"ON CONFLICT (topic, partition, offset) DO UPDATE SET {updates}",
                rows,
            )


class FlightsEnrich(ConsumerJob):
    name = "flights-enrich"
    version = "1.0.0"
    group_id = os.environ.get("FLIGHTS_GROUP", "flights-enrich")
    topics = (os.environ.get("FLIGHTS_TOPIC", "flights"),)
    batch_max_records = 2000
    batch_max_seconds = 0.5
    parameters: ClassVar[dict[str, Any]] = {
        "sink": os.environ.get("FLIGHTS_SINK", "out/flights-stream.sqlite"),
    }
    counter_labels: ClassVar[dict[str, str]] = {"plane_unknown": "planes unknown"}

    def open(self, context: ConsumerContext) -> None:
        self.planes = flights.load_planes(flights.data_folder() / "planes.csv")
        self.sink = Sink(Path(context.params["sink"]))

    def handle(self, message: Message, counters: Counter[str]) -> Any:
        line = (message.value or b"").decode("utf-8", "replace")
        row = flights.enrich_row(flights.parse_row(line), self.planes, counters)
        row["cancelled"] = int(row["cancelled"])
        return tuple(row[name] for name in SINK_COLUMNS)

    def write(self, outputs: Sequence[tuple[Message, Any]]) -> int:
        self.sink.upsert(
            [(m.topic, m.partition, m.offset, *values) for m, values in outputs]
        )
        return len(outputs)

    def close(self) -> None:
        self.sink.db.close()


job = FlightsEnrich()


async def publish(bootstrap: str, topic: str, partitions: int, limit: int) -> int:
    """Produces the flights rows, one CSV line each, keyed by row number."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=262144
    )
    await producer.start()
    sent = 0
    try:
        zip_path = flights.data_folder() / "flights.csv.zip"
        with zipfile.ZipFile(zip_path) as archive:
            member = archive.namelist()[0]
            with io.TextIOWrapper(archive.open(member), encoding="utf-8") as rows:
                next(rows)
                pending = []
                for number, line in enumerate(rows):
                    if sent >= limit:
                        break
                    value = line.rstrip("\n").encode()
                    pending.append(
                        await producer.send(topic, value, key=str(number).encode())
                    )
                    sent += 1
                await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description="Replay flights into Kafka.")
    parser.add_argument("command", choices=["publish"])
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"),
    )
    parser.add_argument("--topic", default=FlightsEnrich.topics[0])
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--limit", type=int, default=400_000)
    args = parser.parse_args()
    from aiokafka.errors import KafkaError

    try:
        sent = asyncio.run(
            publish(args.bootstrap_servers, args.topic, args.partitions, args.limit)
        )
    except KafkaError as error:
        print(
            f"error: Kafka at {args.bootstrap_servers!r} did not answer "
            f"({type(error).__name__}); start it with scripts/kafka.sh and pass "
            "its address with --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS",
            file=sys.stderr,
        )
        sys.exit(2)
    print(orjson.dumps({"topic": args.topic, "published": sent}).decode())


if __name__ == "__main__":
    main()
