"""Adversarial: `ledger abandon` of a consumer run whose process is handling
a batch.

CHANGELOG: "the worker's later appends are refused and it says who
abandoned it". A consumer's checkpoint is saved with its positions
(`save_with_positions`), which turns every IntegrityError into
`PositionRefused`; the checkpoint is then tried again on the abandoned
run, whose attempt is closed, and the consumer ends as a *failed job*
(exit 1, "CheckpointRefused: attempt 1 ... is not the open attempt ...;
once fixed, ... resumes") instead of naming the operator's decision.
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
    new_names,
    produce,
    require_broker,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_a_consumer_abandoned_mid_batch_says_who_abandoned_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    require_broker()
    topic, group = new_names("attack2-abandon")
    create_topic(topic, 1)
    produce(
        topic,
        [{"n": n, **({"poison": "stall"} if n == 50 else {})} for n in range(100)],
        1,
    )
    release = tmp_path / "release"
    consumer = ConsumerProcess(
        url=sqlite_url, topic=topic, group=group, sink=tmp_path / "sink.sqlite",
        member="abandoned", folder=tmp_path, env={"STREAM_STALL_FILE": str(release)},
    )  # fmt: skip
    wait_until(release.with_suffix(".reached").exists, "the slow message", 60)
    (run,) = orjson.loads(
        ledger_command(["status", "--json"], url=sqlite_url, cwd=tmp_path).stdout
    )
    abandoned = ledger_command(
        ["abandon", run["run_id"], "--reason", "host decommissioned", "--as", "oncall"],
        url=sqlite_url,
        cwd=tmp_path,
    )
    assert abandoned.returncode == 0, abandoned.stderr
    release.write_text("go")

    code = consumer.wait()
    last = consumer.log.read_text().strip().splitlines()[-1]
    assert "abandoned by oncall" in last, f"exit {code}: {last}"
    assert code == 2, f"exit {code}: {last}"
