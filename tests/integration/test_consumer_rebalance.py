"""Two consumers in one group, and a rebalance in the middle of a batch.

Consumer A freezes inside a batch (SIGSTOP, as a long GC pause or a frozen
VM would); its session expires and consumer B takes both partitions, from
the ledger's positions, and finishes the topic. Then A wakes up and tries
to checkpoint its stale batch: the ledger refuses it and records it as
superseded. No message is missing, none is checkpointed twice, and the
sink holds each once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import pytest
from conftest import ledger_command, wait_until
from kafka_support import (
    ConsumerProcess,
    checkpointed_ranges,
    create_topic,
    end_offsets,
    kafka_committed,
    ledger_positions,
    new_names,
    produce,
    require_broker,
    sink_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

PARTITIONS = 2
COUNT = 4_000
STALL_AT = 1_000  # an even number: partition 0, offset 500
GROUP_TIMING = {
    "LEDGER_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "LEDGER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
}


def test_fenced_consumer_late_checkpoint_is_superseded(
    tmp_path: Path, postgres_url: str
) -> None:
    require_broker()
    topic, group = new_names("rebalance")
    create_topic(topic, PARTITIONS)
    values = [
        {"n": n, **({"poison": "stall"} if n == STALL_AT else {})} for n in range(COUNT)
    ]
    produce(topic, values, PARTITIONS)
    sink = tmp_path / "sink.sqlite"
    release = tmp_path / "release"
    common = {
        "url": postgres_url, "topic": topic, "group": group, "sink": sink,
        "folder": tmp_path,
    }  # fmt: skip

    # A stalls on the marked message, mid-batch; then the whole process
    # freezes, heartbeats included.
    a = ConsumerProcess(
        **common, member="a",
        env={**GROUP_TIMING, "STREAM_STALL_FILE": str(release)},
    )  # fmt: skip
    reached = release.with_suffix(".reached")
    wait_until(reached.exists, "consumer A to reach the marked message", 90)
    os.kill(a.process.pid, signal.SIGSTOP)
    try:
        # B joins; once A's session expires, B owns both partitions and
        # finishes the topic from the ledger's positions.
        b = ConsumerProcess(**common, member="b", until_idle=2, env=GROUP_TIMING)
        assert b.wait(timeout=180) == 0, b.tail()
        ends = end_offsets(topic, PARTITIONS)
        assert ledger_positions(postgres_url, group, topic) == ends
    finally:
        # A wakes up and finishes its stale batch.
        release.write_text("go")
        os.kill(a.process.pid, signal.SIGCONT)

    a_run = orjson.loads(
        ledger_command(["status", "stream-numbers", "--json"], url=postgres_url,
                       cwd=tmp_path).stdout
    )  # fmt: skip
    a_run_id = next(r["run_id"] for r in a_run if r["consumer"]["member"] == "a")

    def superseded() -> list[dict[str, object]]:
        shown = ledger_command(
            ["history", a_run_id, "--json"], url=postgres_url, cwd=tmp_path
        )
        return [s for att in orjson.loads(shown.stdout)["attempts"]
                for s in att["superseded"]]  # fmt: skip

    refused = wait_until(superseded, "A's late checkpoint to be refused", 90)
    a.process.send_signal(signal.SIGTERM)
    assert a.wait(timeout=120) == 0, a.tail()

    # The refused checkpoint was A's stale work on partition 0, behind
    # what B had recorded.
    assert f"{topic}[0]" in {item["partition"] for item in refused}
    for item in refused:
        assert item["tried"] <= item["recorded"]

    # No gap and no overlap: per partition, the checkpointed batches of
    # both consumers tile the partition exactly once.
    for partition, end in end_offsets(topic, PARTITIONS).items():
        covered = sorted(checkpointed_ranges(postgres_url)[f"{topic}[{partition}]"])
        offsets = [o for first, last in covered for o in range(first, last + 1)]
        assert offsets == list(range(end)), f"partition {partition}"

    # The sink holds every message once; Kafka agrees with the ledger.
    rows = sink_rows(sink)
    assert sorted(n for _, _, n, _ in rows) == list(range(COUNT))
    assert kafka_committed(group, topic) == ledger_positions(postgres_url, group, topic)

    # The story of A's run names the refusal.
    explained = ledger_command(["explain", a_run_id], url=postgres_url, cwd=tmp_path)
    assert "refused because another consumer had recorded them first" in (
        explained.stdout
    ), explained.stdout
