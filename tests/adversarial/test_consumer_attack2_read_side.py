"""Adversarial: what the read commands say about consumer runs.

`ledger explain` of an interrupted consumer run always says "the batch it
was handling will be handled again, one message at a time", read from the
run's state alone. A consumer killed while idle (its last event a
checkpoint, no batch open) was handling nothing: nothing will be handled
one at a time, and the operator is told a story that did not happen.
Same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest
from conftest import ledger_command, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from kafka_support import (
    ConsumerProcess,
    create_topic,
    ledger_positions,
    new_names,
    produce,
    require_broker,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known gap: explain cannot tell an idle consumer's crash from one "
        "inside a batch"
    ),
)
def test_explain_of_a_consumer_killed_while_idle_names_no_batch(
    tmp_path: Path, ledger_url: str
) -> None:
    require_broker()
    topic, group = new_names("attack2-idle-kill")
    create_topic(topic, 1)
    produce(topic, [{"n": n} for n in range(20)], 1)
    consumer = ConsumerProcess(
        url=ledger_url, topic=topic, group=group, sink=tmp_path / "sink.sqlite",
        member="idle-kill", folder=tmp_path,
    )  # fmt: skip
    wait_until(
        lambda: ledger_positions(ledger_url, group, topic) == {0: 20},
        "the checkpoint of all 20 messages",
        60,
    )
    consumer.kill()

    shown = ledger_command(["status", "--json"], url=ledger_url, cwd=tmp_path)
    (run,) = orjson.loads(shown.stdout)
    assert run["state"] == "interrupted", run["state"]
    told = ledger_command(["explain", run["run_id"]], url=ledger_url, cwd=tmp_path)
    assert "handled again, one message at a time" not in told.stdout, told.stdout
