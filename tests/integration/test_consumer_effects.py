"""A consumer's effects keep their keys across a crash and a new member.

A member killed right after an effect's call leaves its batch
uncheckpointed; another member of the group, a run of its own, replays
that batch from the ledger's positions and makes the same effects with
the same keys: the downstream, which honours keys, keeps each message
once, and the ledger counts the repeats as repeated after a crash.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest
from conftest import ledger_command
from kafka_support import (
    ConsumerProcess,
    create_topic,
    new_names,
    produce,
    require_broker,
)

pytestmark = [pytest.mark.kafka]

COUNT = 300
TIMING = {
    "LEDGER_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "LEDGER_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
    "STREAM_BATCH": "50",
}


def test_a_new_member_repeats_a_dead_members_effects_with_their_keys(
    tmp_path: Path, postgres_url: str
) -> None:
    require_broker()
    topic, group = new_names("effects")
    create_topic(topic, 1)
    produce(topic, [{"n": n} for n in range(COUNT)], 1)
    calls = tmp_path / "announced.log"
    common = {
        "url": postgres_url, "topic": topic, "group": group,
        "sink": tmp_path / "sink.sqlite", "folder": tmp_path,
    }  # fmt: skip

    # Member a dies right after the 7th call of its third batch.
    a = ConsumerProcess(
        **common, member="a", until_idle=2.0,
        env={**TIMING, "STREAM_ANNOUNCE_FILE": str(calls),
             "LEDGER_FAULT": "after_effect:consume:2:7"},
    )  # fmt: skip
    assert a.wait() == -9
    before = calls.read_text().splitlines()
    assert len(before) == 107

    # Member b, a run of its own, takes the partition and goes to the end.
    b = ConsumerProcess(
        **common, member="b", until_idle=2.0,
        env={**TIMING, "STREAM_ANNOUNCE_FILE": str(calls)},
    )  # fmt: skip
    assert b.wait() == 0, b.tail()
    b_run = b.summary()["run_id"]

    # The 7 messages announced twice carry the same key both times; every
    # message was announced, and no two messages share a key.
    lines = [line.split(" ") for line in calls.read_text().splitlines()]
    by_offset: dict[int, set[str]] = {}
    for key, _, _, offset in lines:
        by_offset.setdefault(int(offset), set()).add(key)
    assert sorted(by_offset) == list(range(COUNT))
    assert all(len(keys) == 1 for keys in by_offset.values())
    assert len({next(iter(keys)) for keys in by_offset.values()}) == COUNT
    twice = sorted(o for o, n in Counter(int(x[3]) for x in lines).items() if n > 1)
    assert twice == list(range(100, 107))

    # b's run lists them as its repeats after a crash.
    shown = ledger_command(["effects", b_run, "--json"], url=postgres_url, cwd=tmp_path)
    listing = orjson.loads(shown.stdout)
    assert listing["counts"]["repeated_after_crash"] == 7
    repeated = sorted(
        e["record"][3] for e in listing["effects"] if e["repeated_after_crash"]
    )
    assert repeated == list(range(100, 107))
    assert all(e["last_run_id"] == b_run for e in listing["effects"])
