"""The Kafka sink: a replay repeats outputs, a reader's dedupe sees each once.

A relay job (tests/jobs/relay.py) copies every message of an input topic
to an output topic through the sink. The consumer is killed with a
failpoint after a batch was written and before its checkpoint committed,
then restarted with the same member: the batch is replayed, so its outputs
are in the output topic twice, and the keys tell the copies apart from
every other output. The ledger is on the real PostgreSQL server, the
topics on the real broker.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from conftest import LEDGER, REPO
from kafka_support import (
    BOOTSTRAP,
    ConsumerProcess,
    create_topic,
    end_offsets,
    ledger_positions,
    new_names,
    read_topic,
    require_broker,
)

from consumers import ConsumerContext, Message
from consumers.sink import (
    IDEMPOTENCY_KEY_HEADER,
    FirstPerKey,
    KafkaOutput,
    KafkaSink,
    SinkError,
    first_per_key,
    idempotency_key_of,
)
from ledger.config import parse_ledger_url
from ledger.effects import EffectPolicy, EffectRegistry
from ledger.keys import consumer_site, idempotency_key
from ledger.messages import CONSUME_STEP
from ledger.store import opened

pytestmark = [pytest.mark.kafka]

RELAY_JOB = REPO / "tests" / "jobs" / "relay.py"
PARTITIONS = 3
COUNT = 300
BATCH = 50
KILLED_BATCH = 2


class RelayProcess(ConsumerProcess):
    """`ledger consume tests/jobs/relay.py` in a subprocess of its own."""

    def __init__(
        self,
        *,
        url: str,
        source: str,
        output: str,
        group: str,
        folder: Path,
        until_idle: float | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        args = [*LEDGER, "--log-level", "info", "consume", str(RELAY_JOB)]
        args += ["--bootstrap-servers", BOOTSTRAP, "--member", "relay", "--json"]
        if until_idle is not None:
            args += ["--until-idle", str(until_idle)]
        self.log = folder / f"relay-{uuid.uuid4().hex[:6]}.log"
        self.stdout = folder / f"{self.log.stem}.out"
        full_env = {
            **os.environ,
            "LEDGER_URL": url,
            "RELAY_IN": source,
            "RELAY_OUT": output,
            "RELAY_GROUP": group,
            "RELAY_BATCH": str(BATCH),
            **(env or {}),
        }
        with self.log.open("w") as err, self.stdout.open("w") as out:
            self.process = subprocess.Popen(
                args, cwd=folder, env=full_env, stdout=out, stderr=err
            )


def produce_inputs(topic: str) -> dict[tuple[int, int], tuple[int, bytes | None]]:
    """COUNT messages `{"n": N}` over the partitions; every even one keyed
    by an account, every odd one keyless. Returns, per (partition, offset),
    the message's n and key."""

    async def send() -> dict[tuple[int, int], tuple[int, bytes | None]]:
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
        await producer.start()
        try:
            sent: dict[tuple[int, int], tuple[int, bytes | None]] = {}
            for n in range(COUNT):
                key = f"account-{n % 7}".encode() if n % 2 == 0 else None
                meta = await producer.send_and_wait(
                    topic, orjson.dumps({"n": n}), key=key, partition=n % PARTITIONS
                )
                sent[(meta.partition, meta.offset)] = (n, key)
            return sent
        finally:
            await producer.stop()

    return asyncio.run(send())


def started_batch(url: str, batch: int, attempt: int) -> set[tuple[int, int]]:
    """The (partition, offset) of every message the attempt's batch held,
    from its `MessagesStarted` event."""
    with opened(parse_ledger_url(url)) as ledger:
        start, found = 1, set()
        while page := ledger.recorder.select_notifications(start, 1000):
            for notification in page:
                if not notification.topic.endswith("MessagesStarted"):
                    continue
                state = orjson.loads(notification.state)
                if (state["batch"], state["attempt"]) != (batch, attempt):
                    continue
                for item in state["ranges"]:
                    partition = int(item["partition"].rsplit("[", 1)[1].rstrip("]"))
                    offsets = range(item["first"], item["last"] + 1)
                    found |= {(partition, offset) for offset in offsets}
            start = page[-1].id + 1
    return found


def source_of(record: Any) -> tuple[int, int]:
    """The input (partition, offset) an output names in its headers."""
    headers = dict(record.headers)
    return int(headers["ledger.source.partition"]), int(headers["ledger.source.offset"])


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_write", "in_checkpoint"])
def test_a_replayed_batch_is_in_the_topic_twice_and_once_after_dedupe(
    tmp_path: Path, postgres_url: str, point: str
) -> None:
    require_broker()
    source, group = new_names(f"sink-{point.replace('_', '-')}")
    output = f"{source}-out"
    create_topic(source, PARTITIONS)
    create_topic(output, PARTITIONS)
    inputs = produce_inputs(source)

    def relay(**options: Any) -> RelayProcess:
        return RelayProcess(
            url=postgres_url, source=source, output=output, group=group,
            folder=tmp_path, **options,
        )  # fmt: skip

    # The first process dies once batch 2 is written and acknowledged, but
    # before its checkpoint commits.
    killed = relay(env={"LEDGER_FAULT": f"{point}:consume:{KILLED_BATCH}"})
    assert killed.wait() == -9, killed.tail()
    replayed = started_batch(postgres_url, KILLED_BATCH, attempt=1)
    assert replayed, "the killed batch was never started"
    assert replayed <= inputs.keys()

    # `write` returned only when the broker had every output of the batch.
    before = Counter(source_of(record) for record in read_topic(output))
    assert replayed <= before.keys()

    # The restart resumes from the ledger: the killed batch is handled again.
    final = relay(until_idle=2)
    assert final.wait(timeout=180) == 0, final.tail()
    assert ledger_positions(postgres_url, group, source) == end_offsets(
        source, PARTITIONS
    )

    # Raw, the topic holds the killed batch's outputs twice and the rest once.
    records = read_topic(output)
    copies = Counter(source_of(record) for record in records)
    assert copies.keys() == inputs.keys()
    assert {where for where, count in copies.items() if count > 1} == replayed
    assert set(copies.values()) == {1, 2}
    assert len(records) == COUNT + len(replayed)

    # Both copies of an output are the same message, in the same partition.
    by_key: dict[str, list[Any]] = defaultdict(list)
    for record in records:
        key = idempotency_key_of(record)
        assert key is not None
        by_key[key].append(record)
    for key, same in by_key.items():
        assert len({(r.partition, r.key, r.value, source_of(r)) for r in same}) == 1
        assert len(same) == (2 if source_of(same[0]) in replayed else 1), key

    # Two inputs never share a key; each key is the one the ledger derives
    # for the message, whoever handles it, on every attempt.
    site = consumer_site("kafka-relay", group, CONSUME_STEP)
    for key, same in by_key.items():
        partition, offset = source_of(same[0])
        message = ("message", source, partition, offset)
        assert key == str(idempotency_key(site, message, "relay"))
    assert len(by_key) == COUNT

    # The Kafka key is the input's own; a keyless input is keyed by its
    # idempotency key, so that its copies share a partition.
    for key, same in by_key.items():
        n, input_key = inputs[source_of(same[0])]
        assert same[0].key == (input_key or key.encode())
        assert orjson.loads(same[0].value) == {"n": n}

    # After the reader's dedupe every input is there exactly once.
    kept = first_per_key(records)
    assert sorted(source_of(record) for record in kept) == sorted(inputs)
    assert sorted(orjson.loads(r.value)["n"] for r in kept) == list(range(COUNT))


# The sink in this process, on a context as `ledger consume` gives one.


@pytest.fixture
def context(sqlite_url: str) -> Iterator[ConsumerContext]:
    declared = {
        "relay": EffectPolicy(honours_keys=True),
        "blind": EffectPolicy(honours_keys=False),
    }
    with opened(parse_ledger_url(sqlite_url)) as ledger:
        registry = EffectRegistry(
            ledger, uuid4(), declared, lambda step: consumer_site("t", "g", step)
        )
        registry.at(CONSUME_STEP)
        yield ConsumerContext(
            run_id=uuid4(), group="g", member="m",
            params={"bootstrap_servers": BOOTSTRAP}, registry=registry,
        )  # fmt: skip


def message(offset: int) -> Message:
    return Message("input", 0, offset, None, orjson.dumps({"n": offset}))


@pytest.mark.parametrize("effect", ["blind", "missing"])
def test_the_sink_refuses_an_effect_whose_readers_do_not_dedupe(
    context: ConsumerContext, effect: str
) -> None:
    with pytest.raises(SinkError, match=r"honours_keys=True.*idempotency-key"):
        KafkaSink(context, topic="unused", effect=effect)


def test_send_returns_once_the_broker_has_every_message(
    context: ConsumerContext,
) -> None:
    require_broker()
    topic, _ = new_names("sink-acks")
    create_topic(topic, 1)

    # The producer holds messages back for 2 s hoping for more: a send that
    # returned before the acknowledgements would leave the topic empty.
    options = {"linger_ms": 2000}
    with KafkaSink(
        context, topic=topic, effect="relay", producer_options=options
    ) as sink:
        assert sink.send(KafkaOutput(message(n), b"v") for n in range(10)) == 10
        assert end_offsets(topic, 1) == {0: 10}


def test_outputs_of_one_message_need_parts_of_their_own(
    context: ConsumerContext,
) -> None:
    require_broker()
    topic, _ = new_names("sink-parts")
    create_topic(topic, 1)
    with KafkaSink(context, topic=topic, effect="relay") as sink:
        same = [KafkaOutput(message(7), b"a"), KafkaOutput(message(7), b"b")]
        with pytest.raises(SinkError, match="its own `part`"):
            sink.send(same)
        assert end_offsets(topic, 1) == {0: 0}

        parts = [
            KafkaOutput(message(7), b"a", part="a"),
            KafkaOutput(message(7), b"b", part="b"),
        ]
        assert sink.send(parts) == 2
    keys = [idempotency_key_of(record) for record in read_topic(topic)]
    assert keys == [context.key("relay", message(7), part) for part in "ab"]
    assert keys[0] != keys[1]


def test_a_refused_output_fails_the_batch_after_the_rest_is_acknowledged(
    context: ConsumerContext,
) -> None:
    require_broker()
    topic, _ = new_names("sink-refused")
    create_topic(topic, 1)
    # Held back 2 s by the producer: only a wait for them puts them in the
    # topic before `send` raises.
    options = {"max_request_size": 2048, "linger_ms": 2000}
    with KafkaSink(
        context, topic=topic, effect="relay", producer_options=options
    ) as sink:
        batch = [KafkaOutput(message(n), b"small") for n in range(3)]
        batch.append(KafkaOutput(message(3), b"x" * 4096))
        with pytest.raises(SinkError, match="refused the batch"):
            sink.send(batch)

        # Nothing queued before the refusal is left in flight.
        assert end_offsets(topic, 1) == {0: 3}
    kept = first_per_key(read_topic(topic))
    assert [r.value for r in kept] == [b"small"] * 3


def test_first_per_key_keeps_the_first_copy_and_passes_foreign_records() -> None:
    def record(key: str | None, value: bytes) -> Message:
        headers = () if key is None else ((IDEMPOTENCY_KEY_HEADER, key.encode()),)
        return Message("out", 0, 0, None, value, headers)

    records = [
        record("k1", b"first"),
        record(None, b"foreign"),
        record("k1", b"second"),
        record("k2", b"other"),
    ]
    dedupe = FirstPerKey()
    assert [dedupe.admit(r) for r in records] == [True, True, False, True]
    assert dedupe.dropped == 1
    kept = [r.value for r in first_per_key(records)]
    assert kept == [b"first", b"foreign", b"other"]
