"""Benchmark: `ledger consume` next to a plain aiokafka consumer, and kill -9.

Throughput. Each round fills a fresh topic (100,000 JSON messages over 3
partitions) once; every side then reads all of it with a group of its
own: `ledger consume tests/jobs/stream.py` on SQLite (and on PostgreSQL
with `--postgres URL`), and the peer, a plain aiokafka consumer doing the
job's handling and the same SQLite upsert, committing offsets after each
batch of the same bound (500 records or 0.3 s). Both stop the same way:
once caught up and idle for 1 s. Sides run as fresh processes, in an order
that rotates between rounds. Each is timed three ways: wall (process start
to exit, the idle second included), to last batch (process start to the
last batch done) and window (first batch to last).

Recovery. `ledger consume` (no --until-idle) reads a fresh topic until
the ledger holds positions past 5,000 messages; it is killed with SIGKILL
and started again at once with the same --member (static membership), with
--until-idle. Measured from the kill: the restart's first write to the
sink (the primary signal), its attempt, partition assignment, first batch
and first checkpoint in the ledger, and how long the messages of a batch
the kill interrupted took, handled one per batch as suspects.

Usage: python bench/consumer_throughput.py [--rounds N] [--kills N]
    [--postgres URL] [--bootstrap-servers HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from measure import REPO, environment, ledger_command, ratio, summarize, write_results

from ledger.config import parse_ledger_url
from ledger.positions import load_positions
from ledger.store import opened

BOOTSTRAP = "127.0.0.1:19092"
MESSAGES = 100_000
PARTITIONS = 3
BATCH = 500
BATCH_SECONDS = 0.3  # tests/jobs/stream.py's batch_max_seconds
IDLE_S = 1.0
KILL_AFTER = 5_000  # messages checkpointed before the kill
STREAM_JOB = REPO / "tests" / "jobs" / "stream.py"
TIMEOUT_S = 300.0


class BenchFailed(RuntimeError):
    """A side misbehaved (error, hang, wrong count): nothing it timed counts."""


def _peer() -> None:
    """The peer: a plain aiokafka consumer doing the stream job's work.

    The benchmark writes this function's source to a file of its own, so
    the peer imports only what such a script needs. It reads the job's own
    environment (STREAM_TOPIC, STREAM_GROUP, STREAM_SINK, STREAM_BATCH);
    argv: bootstrap servers, member, idle seconds, batch seconds.
    """
    import asyncio
    import os
    import sqlite3
    import sys
    import time
    from collections import Counter

    import orjson
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import OffsetAndMetadata

    bootstrap, member = sys.argv[1], sys.argv[2]
    idle_s, batch_s = float(sys.argv[3]), float(sys.argv[4])
    limit = int(os.environ["STREAM_BATCH"])
    db = sqlite3.connect(os.environ["STREAM_SINK"], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS sink (topic TEXT, part INTEGER, "
        "off INTEGER, n INTEGER, deliveries INTEGER NOT NULL DEFAULT 1, "
        "PRIMARY KEY (topic, part, off))"
    )

    def handle(value: bytes, counters: Counter[str]) -> int:
        decoded = orjson.loads(value)
        if decoded.get("poison"):
            raise ValueError(f"poison message {decoded['n']}")
        counters["numbers"] += 1
        return int(decoded["n"])

    def write(rows: list[tuple[str, int, int, int]]) -> None:
        with db:
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO sink (topic, part, off, n) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (topic, part, off) DO UPDATE "
                "SET deliveries = deliveries + 1",
                rows,
            )

    # The ledger's batch bound: up to `limit` records, or what came within
    # `batch_s` of the first one.
    async def fetch(consumer: Any) -> dict[Any, list[Any]]:
        batch: dict[Any, list[Any]] = {}
        count, deadline = 0, None
        while count < limit:
            wait = batch_s if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            got = await consumer.getmany(
                timeout_ms=int(wait * 1000), max_records=limit - count
            )
            if not got and deadline is None:
                return batch
            for tp, records in got.items():
                batch.setdefault(tp, []).extend(records)
                count += len(records)
            if deadline is None:
                deadline = time.monotonic() + batch_s
        return batch

    async def caught_up(consumer: Any) -> bool:
        assigned = list(consumer.assignment())
        ends = await consumer.end_offsets(assigned) if assigned else {}
        return all([await consumer.position(tp) >= ends[tp] for tp in assigned])

    async def consume() -> dict[str, Any]:
        consumer = AIOKafkaConsumer(
            os.environ["STREAM_TOPIC"],
            bootstrap_servers=bootstrap,
            group_id=os.environ["STREAM_GROUP"],
            client_id=f"peer-{member}",
            group_instance_id=member,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        done: dict[str, Any] = {"messages": 0, "batches": 0, "first_batch_at": None}
        idle_since = time.monotonic()
        try:
            while True:
                batch = await fetch(consumer)
                if not batch:
                    idle = time.monotonic() - idle_since >= idle_s
                    if idle and await caught_up(consumer):
                        return done
                    continue
                done["first_batch_at"] = done["first_batch_at"] or time.time()
                counters: Counter[str] = Counter()
                rows = [
                    (tp.topic, tp.partition, r.offset, handle(r.value, counters))
                    for tp, records in batch.items()
                    for r in records
                ]
                write(rows)
                offsets = {
                    tp: OffsetAndMetadata(records[-1].offset + 1, "")
                    for tp, records in batch.items()
                }
                await consumer.commit(offsets)
                done["messages"] += len(rows)
                done["batches"] += 1
                done["last_batch_at"] = time.time()
                idle_since = time.monotonic()
        finally:
            await consumer.stop()

    summary = asyncio.run(consume())
    db.close()
    print(orjson.dumps(summary).decode())


async def _fill_topic(bootstrap: str, topic: str, count: int) -> None:
    """A new topic with `count` messages {"n": i}, round-robin over partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        for _ in range(200):
            described = await admin.describe_topics([topic])
            leaders = [p["leader"] for p in described[0]["partitions"]]
            if len(leaders) == PARTITIONS and min(leaders) >= 0:
                break
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, orjson.dumps({"n": n}), partition=n % PARTITIONS)
            for n in range(count)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _drop_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


@contextmanager
def _filled_topic(bootstrap: str, prefix: str) -> Iterator[str]:
    """A fresh topic of MESSAGES messages, deleted after, even on failure."""
    topic = f"{prefix}-{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_fill_topic(bootstrap, topic, MESSAGES))
        yield topic
    finally:
        asyncio.run(_drop_topic(bootstrap, topic))


@contextmanager
def _ledger_url(postgres: str | None, folder: Path) -> Iterator[str]:
    """A fresh ledger: SQLite in `folder`, or a new database on the server of
    `postgres`, dropped after."""
    if postgres is None:
        yield f"sqlite:///{folder / 'ledger.sqlite'}"
        return
    import psycopg
    from psycopg import sql

    name = f"bench_consume_{uuid.uuid4().hex[:10]}"
    database = sql.Identifier(name)
    with psycopg.connect(postgres, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(database))
    try:
        yield urlunsplit(urlsplit(postgres)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(postgres, autocommit=True, connect_timeout=5) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(database))


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


TIMED_EVENTS = ("Run.AttemptStarted", "MessagesStarted", "MessagesCheckpointed")


def _timed_events(url: str) -> list[dict[str, Any]]:
    """The ledger's attempts and batches, in log order, each with its kind
    and its time as epoch seconds (taken when the event was made, just
    before the transaction that stores it)."""
    found = []
    with opened(parse_ledger_url(url)) as ledger:
        start = 1
        while page := ledger.recorder.select_notifications(start, 1000):
            for note in page:
                kind = note.topic.rpartition(":")[2]
                if kind in TIMED_EVENTS:
                    state = orjson.loads(note.state)
                    found.append(
                        {**state, "kind": kind, "at": _epoch(state["timestamp"])}
                    )
            start = page[-1].id + 1
    return found


def _sink_counts(path: Path) -> tuple[int, int, int]:
    """Rows, deliveries and rows delivered more than once, in the sink."""
    if not path.exists():
        return 0, 0, 0
    with closing(sqlite3.connect(path)) as db:
        try:
            rows, total, again = db.execute(
                "SELECT COUNT(*), TOTAL(deliveries), "
                "COUNT(*) FILTER (WHERE deliveries > 1) FROM sink"
            ).fetchone()
        except sqlite3.OperationalError:
            return 0, 0, 0
    return int(rows), int(total), int(again)


class _Process:
    """A side as a subprocess: when it started, what it printed, its log."""

    def __init__(self, argv: list[str], env: dict[str, str], folder: Path) -> None:
        self.log = folder / f"{uuid.uuid4().hex[:8]}.log"
        self.cpu_before = _children_cpu()
        self.started_at = time.time()
        self.started = time.perf_counter()
        with self.log.open("w") as err:
            self.process = subprocess.Popen(
                argv, env=env, cwd=folder, stdout=subprocess.PIPE, stderr=err
            )

    def finish(self) -> tuple[float, float, dict[str, Any]]:
        """Wall seconds from start to exit, CPU seconds (meaningful when no
        other child ran meanwhile) and the summary it printed."""
        try:
            out, _ = self.process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchFailed(f"no exit in {TIMEOUT_S} s; log: {self.tail()}") from None
        wall = time.perf_counter() - self.started
        if self.process.returncode != 0:
            raise BenchFailed(f"exited {self.process.returncode}; log: {self.tail()}")
        return wall, _children_cpu() - self.cpu_before, orjson.loads(out)

    def kill(self) -> None:
        """SIGKILL, then reap: nothing of the process runs on."""
        self.process.kill()
        self.process.communicate()

    def tail(self) -> str:
        return " | ".join(self.log.read_text().splitlines()[-8:])

    def logged(self, event: str) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        records = [orjson.loads(line) for line in lines if line.startswith("{")]
        return [record for record in records if record.get("event") == event]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stream_env(topic: str, folder: Path, url: str | None = None) -> dict[str, str]:
    """The stream job's settings, the same for both sides; a fresh group."""
    env = {
        **os.environ,
        "STREAM_TOPIC": topic,
        "STREAM_GROUP": f"bench-{uuid.uuid4().hex[:10]}",
        "STREAM_SINK": str(folder / "sink.sqlite"),
        "STREAM_BATCH": str(BATCH),
    }
    if url is not None:
        env["LEDGER_URL"] = url  # through the environment: no password in `ps`
    return env


def _start_ledger(env: dict[str, str], folder: Path, *args: str) -> _Process:
    argv = [ledger_command(), "--log-level", "info", "consume", str(STREAM_JOB)]
    argv += ["--member", "bench", "--json", *args]
    return _Process(argv, env, folder)


@dataclass(frozen=True)
class Consumed:
    """One side's pass over the topic. `to_last_s`: from process start to
    the last batch done; `window_s`: from the first batch to the last."""

    wall_s: float
    cpu_s: float
    to_last_s: float
    window_s: float
    batches: int


def _run_side(side: str, topic: str, options: argparse.Namespace) -> Consumed:
    """One side reads the whole topic as a fresh group, until idle."""
    with tempfile.TemporaryDirectory(prefix="bench-consume-") as name:
        folder = Path(name)
        postgres = options.postgres if side == "ledger_postgres" else None
        with _ledger_url(postgres, folder) as url:
            if side == "peer":
                argv = [sys.executable, str(options.peer_file), options.bootstrap]
                argv += ["bench", str(IDLE_S), str(BATCH_SECONDS)]
                process = _Process(argv, _stream_env(topic, folder), folder)
            else:
                env = _stream_env(topic, folder, url)
                process = _start_ledger(
                    env, folder, "--bootstrap-servers", options.bootstrap,
                    "--until-idle", str(IDLE_S),
                )  # fmt: skip
            wall, cpu, summary = process.finish()

            # The peer stamps its batches itself; the ledger's side is read
            # from its events, whose checkpoint time comes a few ms before
            # its transaction and Kafka's commit (in the ledger's favour).
            if side == "peer":
                first, last = summary["first_batch_at"], summary["last_batch_at"]
            else:
                events = _timed_events(url)
                first = next(e["at"] for e in events if e["kind"] == "MessagesStarted")
                last = [e for e in events if e["kind"] == "MessagesCheckpointed"][-1][
                    "at"
                ]
        rows, deliveries, _ = _sink_counts(folder / "sink.sqlite")
    if not summary["messages"] == rows == deliveries == MESSAGES:
        raise BenchFailed(
            f"{side}: {summary['messages']} messages, {rows} sink rows, "
            f"{deliveries} deliveries; expected {MESSAGES} of each"
        )
    to_last = last - process.started_at
    return Consumed(wall, cpu, to_last, last - first, summary["batches"])


def _throughput(options: argparse.Namespace) -> dict[str, Any]:
    """Rounds of every side on one fresh topic each; medians and ratios."""
    names = ["ledger_sqlite", "peer"]
    names += ["ledger_postgres"] if options.postgres else []
    rounds: list[dict[str, Consumed]] = []
    for number in range(options.rounds):
        shift = number % len(names)
        with _filled_topic(options.bootstrap, "bench-consume") as topic:
            measured = {s: _run_side(s, topic, options) for s in names[shift:]}
            measured |= {s: _run_side(s, topic, options) for s in names[:shift]}
        rounds.append(measured)
        shown = ", ".join(
            f"{side} {c.wall_s:.2f} s wall, {c.to_last_s:.2f} s to last batch"
            for side, c in measured.items()
        )
        print(f"round {number + 1}: {shown}", flush=True)

    measures = {"wall": "wall_s", "cpu": "cpu_s", "to_last_batch": "to_last_s"}
    measures["window"] = "window_s"
    sides: dict[str, Any] = {}
    for side in names:
        taken = [r[side] for r in rounds]
        sides[side] = {
            key: summarize([getattr(c, field) for c in taken])
            for key, field in measures.items()
        }
        sides[side]["messages_per_s"] = {
            key: round(MESSAGES / sides[side][key]["median_s"])
            for key in ("to_last_batch", "window")
        }
        sides[side]["batches"] = sorted({c.batches for c in taken})

    # Per-round ratios, then their median: the pairing cancels drift.
    ratios = {
        f"{side}/peer": {
            key: statistics.median(
                ratio(getattr(r[side], field), getattr(r["peer"], field))
                for r in rounds
            )
            for key, field in measures.items()
        }
        for side in names
        if side != "peer"
    }
    return {"sides": sides, "ratios_paired_median": ratios}


def _recover_once(topic: str, url: str, options: argparse.Namespace) -> dict[str, Any]:
    """Kill -9 a consumer in full flow, restart it, time the way back."""
    with tempfile.TemporaryDirectory(prefix="bench-consume-") as name:
        folder = Path(name)
        env = _stream_env(topic, folder, url)
        kafka = ("--bootstrap-servers", options.bootstrap)
        killed = _start_ledger(env, folder, *kafka)

        # In full flow: the ledger holds positions past KILL_AFTER.
        deadline = time.monotonic() + 60
        with opened(parse_ledger_url(url)) as ledger:
            while (
                sum(load_positions(ledger, env["STREAM_GROUP"]).values()) < KILL_AFTER
            ):
                if killed.process.poll() is not None or time.monotonic() > deadline:
                    killed.kill()
                    raise BenchFailed(f"no checkpoint of {KILL_AFTER}: {killed.tail()}")
                time.sleep(0.02)
        killed_at = time.time()
        killed.kill()
        sink = folder / "sink.sqlite"
        before = _sink_counts(sink)[1]
        restart = _start_ledger(env, folder, *kafka, "--until-idle", str(IDLE_S))

        # The primary signal: the restart's first write to the sink, a new
        # row or one more delivery of a row (polled every 2 ms).
        written_at = None
        while written_at is None and restart.process.poll() is None:
            if _sink_counts(sink)[1] > before:
                written_at = time.time()
            time.sleep(0.002)
        _, _, summary = restart.finish()
        rows, _, twice = _sink_counts(sink)
        events = _timed_events(url)
        ours = [e for e in events if e["attempt"] == summary["attempt"]]
        theirs = [e for e in events if e["attempt"] < summary["attempt"]]
        assigned = restart.logged("partition.assigned")
    if written_at is None or rows != MESSAGES or not assigned:
        raise BenchFailed(f"restart left {rows} of {MESSAGES} rows: {restart.tail()}")
    checkpoints = [e for e in ours if e["kind"] == "MessagesCheckpointed"]
    alone = [e for e in checkpoints if e["records"] == 1]
    first = {
        kind: next(e["at"] for e in ours if e["kind"] == kind) for kind in TIMED_EVENTS
    }
    return {
        "kill_to_restart_spawned_s": restart.started_at - killed_at,
        "kill_to_attempt_started_s": first["Run.AttemptStarted"] - killed_at,
        "kill_to_partitions_assigned_s": _epoch(assigned[0]["timestamp"]) - killed_at,
        "kill_to_first_batch_started_s": first["MessagesStarted"] - killed_at,
        "kill_to_first_sink_write_s": written_at - killed_at,
        "kill_to_first_checkpoint_s": first["MessagesCheckpointed"] - killed_at,
        "restart_first_message_after_s": summary["first_message_after"],
        "restart_attempt": summary["attempt"],
        "restart_messages": summary["messages"],
        "restart_batches": summary["batches"],
        # Killed between a batch's MessagesStarted and its checkpoint: the
        # restart handles that batch's messages one per batch (suspects),
        # to pin down a message that kills its worker.
        "killed_inside_a_batch": theirs[-1]["kind"] == "MessagesStarted",
        "suspect_batches": len(alone),
        "kill_to_suspects_checkpointed": alone[-1]["at"] - killed_at if alone else None,
        "rows_delivered_twice": twice,
        "divergences": summary["divergences"],
    }


def _recovery(options: argparse.Namespace, postgres: str | None) -> dict[str, Any]:
    kills = []
    for number in range(options.kills):
        with (
            _filled_topic(options.bootstrap, "bench-recover") as topic,
            tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder,
            _ledger_url(postgres, Path(folder)) as url,
        ):
            kills.append(_recover_once(topic, url, options))
        print(
            f"kill {number + 1}: first sink write "
            f"{kills[-1]['kill_to_first_sink_write_s']:.3f} s after the kill",
            flush=True,
        )
    timed = [key for key in kills[0] if key.endswith("_s")]
    suspects = [
        k["kill_to_suspects_checkpointed"] for k in kills if k["suspect_batches"]
    ]
    return {
        "kills": kills,
        **{key: summarize([k[key] for k in kills]) for key in timed},
        "kill_to_suspects_checkpointed": summarize(suspects) if suspects else None,
    }


def _table(results: dict[str, Any]) -> str:
    throughput = results["throughput"]
    columns = ("wall", "cpu", "to_last_batch", "window")
    lines = [
        f"Throughput: {MESSAGES:,} messages over {PARTITIONS} partitions, batches "
        f"of {BATCH}, stop after {IDLE_S} s idle; medians of {results['rounds']} "
        "rounds. to last = process start to last batch done; window = first "
        "batch to last.",
        f"{'side':<24}{'wall':>8}{'cpu':>8}{'to last':>9}{'window':>8}"
        f"{'msg/s to last':>15}{'msg/s window':>14}",
    ]
    for side, got in throughput["sides"].items():
        seconds = "".join(
            f"{got[key]['median_s']:>{9 if key == 'to_last_batch' else 8}.2f}"
            for key in columns
        )
        rates = got["messages_per_s"]
        lines.append(
            f"{side:<24}{seconds}{rates['to_last_batch']:>15,}{rates['window']:>14,}"
        )
    lines.append("time ratio, median of rounds")
    for label, got in throughput["ratios_paired_median"].items():
        ratios = "".join(
            f"{got[key]:>{8 if key == 'to_last_batch' else 7}.2f}x" for key in columns
        )
        lines.append(f"{label:<24}{ratios}")
    for store, recovery in results["recovery"].items():
        kills = recovery["kills"]
        lines += [
            "",
            f"Recovery on {store}, {len(kills)} kills{'median':>20}{'max':>9}",
        ]
        for key in [k for k in recovery if k.endswith("_s")]:
            got = recovery[key]
            lines.append(f"  {key:<34}{got['median_s']:>8.3f}s{got['max_s']:>8.3f}s")
        twice = [k["rows_delivered_twice"] for k in kills]
        behind = sum(bool(k["divergences"]) for k in kills)
        lines.append(f"  rows written twice, per kill: {twice}")
        lines.append(
            f"  restarts that found Kafka's offset behind the ledger: {behind}"
        )
        inside = [k["suspect_batches"] for k in kills if k["killed_inside_a_batch"]]
        lines.append(
            f"  killed inside a batch: {len(inside)} of {len(kills)}; the restart "
            f"then ran one-message batches: {inside}"
        )
        if recovery["kill_to_suspects_checkpointed"]:
            got = recovery["kill_to_suspects_checkpointed"]
            lines.append(
                f"  {'kill_to_suspects_checkpointed':<34}{got['median_s']:>8.3f}s"
                f"{got['max_s']:>8.3f}s"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--postgres", metavar="URL", default=None)
    parser.add_argument("--bootstrap-servers", dest="bootstrap", default=BOOTSTRAP)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-consume-peer-") as folder:
        # Annotations stay unevaluated: the peer imports no typing names.
        options.peer_file = Path(folder) / "peer.py"
        source = inspect.getsource(_peer)
        options.peer_file.write_text(
            f"from __future__ import annotations\n\n\n{source}\n\n_peer()\n"
        )
        throughput = _throughput(options)
    recovery = {"sqlite": _recovery(options, None)}
    if options.postgres:
        recovery["postgresql"] = _recovery(options, options.postgres)

    results = {
        "benchmark": "consumer_throughput",
        "environment": environment(),
        "messages": MESSAGES,
        "partitions": PARTITIONS,
        "batch_max_records": BATCH,
        "batch_max_seconds": BATCH_SECONDS,
        "idle_s": IDLE_S,
        "kill_after_checkpointed": KILL_AFTER,
        "rounds": options.rounds,
        "throughput": throughput,
        "recovery": recovery,
    }
    path = write_results("consumer_throughput", results)
    print()
    print(_table(results))
    print(f"\nresults: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
