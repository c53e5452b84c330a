"""Adversarial: a partition given back while the batch from before the
rebalance is still in flight.

`_on_revoked` waits REVOKE_TIMEOUT_S (10 s) for the batch in flight, then
lets the group move on. When the new assignment gives the same partition
back to the same member, `_on_assigned` takes it out of `_revoking` (so
the old batch goes on handling it), reads the ledger's positions while
that batch is not yet checkpointed (its call waits on the worker thread
behind the handler), and seeks the partition back to them. Meanwhile the
old batch's `_read_past` asks aiokafka for the partition's position,
which after a new assignment is Kafka's committed offset or the reset
policy's answer, not where the batch read to.

Two members, a topic of two partitions, 100 messages each. Member A
(`a-member`, first in the round-robin order, so p0 comes back to it)
stalls on p0's first message; member B joins; A's revoke times out; A is
given p0 again, B p1; only then is A's handler released.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import orjson
import pytest
from conftest import ledger_command, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import kafka_support
from kafka_support import (
    STREAM_JOB,
    ConsumerProcess,
    create_topic,
    ledger_positions,
    new_names,
    produce,
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PER_PARTITION = 100


def _job(folder: Path, reset: str = "earliest") -> Path:
    """tests/jobs/stream.py whose `write` takes a second (a remote sink), so
    that the assignment's reads run before the in-flight batch's checkpoint
    rather than racing it; with the given auto_offset_reset."""
    path = folder / f"stream_{reset}.py"
    path.write_text(
        "import importlib.util\n"
        "import time\n"
        f"spec = importlib.util.spec_from_file_location('stream_{uuid.uuid4().hex}', "
        f"{str(STREAM_JOB)!r})\n"
        "base = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(base)\n\n\n"
        "class SlowSink(base.StreamNumbers):\n"
        f"    auto_offset_reset = {reset!r}\n\n"
        "    def write(self, outputs):\n"
        "        time.sleep(1.0)\n"
        "        return super().write(outputs)\n\n\n"
        "job = SlowSink()\n"
    )
    return path


def _given_back_mid_batch(
    folder: Path, url: str, topic: str, group: str, *, more_for_p0: bool = False
) -> tuple[ConsumerProcess, ConsumerProcess]:
    """A stalls on p0's first message; B joins; A's revoke times out and A
    is given p0 again; then (optionally 100 more messages reach p0 and) A's
    handler is released. Returns both members, still running."""
    release = folder / "release"
    a = ConsumerProcess(
        url=url, topic=topic, group=group, sink=folder / "sink.sqlite",
        member="a-member", folder=folder, env={"STREAM_STALL_FILE": str(release)},
    )  # fmt: skip
    wait_until(lambda: len(a.logged("partition.assigned")) == 2, "A to own both", 60)
    produce(
        topic,
        [
            {"n": n, **({"poison": "stall"} if n == 0 else {})}
            for n in range(2 * PER_PARTITION)
        ],
        2,
    )
    wait_until(release.with_suffix(".reached").exists, "A to stall on p0@0", 60)
    b = ConsumerProcess(
        url=url, topic=topic, group=group, sink=folder / "sink.sqlite",
        member="b-member", folder=folder,
    )  # fmt: skip
    wait_until(
        lambda: a.logged("partitions.revoke_timeout"), "A's revoke to time out", 60
    )
    wait_until(
        lambda: "with generation 2" in a.log.read_text(), "A to be given p0 back", 60
    )
    if more_for_p0:
        produce(topic, [{"n": 1000 + n} for n in range(PER_PARTITION)], 1)
    release.write_text("go")
    return a, b


def _stop(*members: ConsumerProcess) -> None:
    for member in members:
        member.process.send_signal(15)
    for member in members:
        assert member.wait(timeout=120) == 0, member.tail()


def _p0_settled(url: str, group: str, topic: str, folder: Path) -> bool:
    p0 = {off for part, off, _, _ in sink_rows(folder / "sink.sqlite") if part == 0}
    return (
        ledger_positions(url, group, topic).get(0) == PER_PARTITION
        and len(p0) == PER_PARTITION
    )


def test_a_partition_given_back_is_not_handled_twice_nor_superseded_by_itself(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards against: A's in-flight batch checkpoints p0 at 100, but the
    assignment had already sought p0 back to 0; A handles all 100 messages
    again, its checkpoint is refused, and the ledger records that "another
    consumer had recorded" p0 first: no other consumer ever owned p0."""
    require_broker()
    topic, group = new_names("attack2-given-back")
    create_topic(topic, 2)
    monkeypatch.setattr(kafka_support, "STREAM_JOB", _job(tmp_path))
    a, b = _given_back_mid_batch(tmp_path, sqlite_url, topic, group)
    wait_until(
        lambda: _p0_settled(sqlite_url, group, topic, tmp_path), "p0 handled", 60
    )
    wait_until(lambda: a.logged("partition.assigned")[2:], "A's assignment", 60)

    # One more message for p0: A reaches it only after whatever it was
    # sought back to, in offset order.
    produce(topic, [{"n": 5000}], 1)
    wait_until(
        lambda: ledger_positions(sqlite_url, group, topic).get(0) == PER_PARTITION + 1,
        "A to handle p0's next message",
        60,
    )
    _stop(a, b)

    run_id = a.summary()["run_id"]
    history = ledger_command(
        ["history", run_id, "--json"], url=sqlite_url, cwd=tmp_path
    )
    refused = [
        x for t in orjson.loads(history.stdout)["attempts"] for x in t["superseded"]
    ]
    assert refused == [], f"A's own checkpoint was refused as another's: {refused}"
    twice = sorted(
        off for part, off, _, n in sink_rows(tmp_path / "sink.sqlite") if n > 1
    )
    assert twice == [], f"{len(twice)} p0 messages were handled twice, no crash"


def test_status_tells_where_a_revoked_and_given_back_partition_stands(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards against: A's run showing p1 `assigned` for ever after B took it
    (the timed-out revoke was never recorded; fixed in 1d2e6d9), and p0
    `superseded` at position 0 (the assignment recorded after the
    checkpoint moves the run's position back to where it was read before;
    still so at 1d2e6d9)."""
    require_broker()
    topic, group = new_names("attack2-given-back-status")
    create_topic(topic, 2)
    monkeypatch.setattr(kafka_support, "STREAM_JOB", _job(tmp_path))
    a, b = _given_back_mid_batch(tmp_path, sqlite_url, topic, group)
    wait_until(
        lambda: (
            _p0_settled(sqlite_url, group, topic, tmp_path)
            and ledger_positions(sqlite_url, group, topic).get(1) == PER_PARTITION
        ),
        "both partitions handled",
        60,
    )
    wait_until(lambda: a.logged("partition.assigned")[2:], "A's assignment", 60)
    _stop(a, b)

    shown = ledger_command(
        ["status", "stream-numbers", "--json"], url=sqlite_url, cwd=tmp_path
    )
    runs = {r["run_id"]: r for r in orjson.loads(shown.stdout)}
    mine = {
        p["partition"]: (p["state"], p["position"])
        for p in runs[a.summary()["run_id"]]["consumer"]["partitions"]
    }
    assert mine.get(f"{topic}[1]", ("?",))[0] != "assigned", (
        f"A's run still shows p1 assigned, though B consumed it: {mine}"
    )
    assert mine.get(f"{topic}[0]") == ("assigned", PER_PARTITION), mine


def test_a_partition_given_back_never_jumps_past_unread_messages(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards against: with auto_offset_reset="latest", the 100 messages that
    reached p0 during the stall (offsets 100..199) are never handled. Found
    at 806390a: A's in-flight batch handled 0..99 and recorded next=200,
    because `_read_past` took aiokafka's reset position (the log's end) for
    the batch's. With that guarded (1d2e6d9), the
    assignment still places p0 from positions read before the in-flight
    batch's checkpoint: none in the ledger, none in Kafka, so "latest"
    seeks p0 to 200, past messages nobody handled."""
    require_broker()
    topic, group = new_names("attack2-given-back-latest")
    create_topic(topic, 2)
    monkeypatch.setattr(kafka_support, "STREAM_JOB", _job(tmp_path, "latest"))
    a, b = _given_back_mid_batch(tmp_path, sqlite_url, topic, group, more_for_p0=True)
    wait_until(
        lambda: ledger_positions(sqlite_url, group, topic).get(0, 0) >= PER_PARTITION,
        "A's checkpoint of p0",
        60,
    )
    wait_until(lambda: a.logged("partition.assigned")[2:], "A's assignment", 60)

    # One more message for p0 (offset 200): once it is checkpointed, p0's
    # position has passed every message before it.
    produce(topic, [{"n": 9999}], 1)
    end = 2 * PER_PARTITION + 1
    wait_until(
        lambda: ledger_positions(sqlite_url, group, topic).get(0) == end,
        "p0's last message to be checkpointed",
        60,
    )
    _stop(a, b)

    p0 = {off for part, off, _, _ in sink_rows(tmp_path / "sink.sqlite") if part == 0}
    missing = sorted(set(range(end)) - p0)
    assert missing == [], (
        f"p0 is checkpointed at {end} but {len(missing)} of its messages were "
        f"never handled: {missing[:5]}..."
    )
