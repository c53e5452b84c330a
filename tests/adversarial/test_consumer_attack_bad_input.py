"""Adversarial: bad input to `ledger consume` that is not refused cleanly.

The contract (README, ledger/errors.py): bad input ends with one line on
stderr naming the fix, exit code 2, no traceback and nothing recorded.
Most cases point --bootstrap-servers at a closed port on 127.0.0.1, so
that a consumer whose job settings were wrongly accepted shows up as
"Kafka did not answer" instead of the setting's own error.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import orjson
import pytest
from conftest import REPO, ledger_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from kafka_support import (
    BOOTSTRAP,
    ConsumerProcess,
    create_topic,
    new_names,
    produce,
    require_broker,
)

STREAM_JOB = REPO / "tests" / "jobs" / "stream.py"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _one_clear_line(stderr: str) -> bool:
    lines = stderr.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ")


def _variant(folder: Path, body: str) -> Path:
    """The test stream job with one class attribute changed."""
    job = folder / "variant.py"
    job.write_text(
        "import runpy\n"
        "from consumers import RetryPolicy\n"
        f"base = runpy.run_path({str(STREAM_JOB)!r})['StreamNumbers']\n"
        "class Variant(base):\n"
        f"    {body}\n"
        "job = Variant()\n"
    )
    return job


@pytest.mark.parametrize(
    "servers",
    ["127.0.0.1:abc", "127.0.0.1:70000", f"{BOOTSTRAP},127.0.0.1:y"],
)
def test_malformed_bootstrap_servers_are_refused_in_one_line(
    tmp_path: Path, sqlite_url: str, servers: str
) -> None:
    """Guards against: a port that is not a number (or out of range) ends in
    a ValueError/OverflowError traceback with exit code 1."""
    result = ledger_command(
        ["consume", str(STREAM_JOB), "--bootstrap-servers", servers],
        url=sqlite_url,
        cwd=tmp_path,
        env={"STREAM_SINK": str(tmp_path / "sink.sqlite")},
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--bootstrap-servers" in result.stderr


def test_unreachable_broker_is_reported_in_one_line(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Guards against: aiokafka's own 'Unable connect to ...' log line on
    stderr before the ledger's error line (two lines, not one)."""
    result = ledger_command(
        [
            "consume",
            str(STREAM_JOB),
            "--bootstrap-servers",
            f"127.0.0.1:{_closed_port()}",
        ],
        url=sqlite_url,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert _one_clear_line(result.stderr), result.stderr


@pytest.mark.parametrize(
    ("body", "names"),
    [
        # A bare string: list("orders") subscribes to o, r, d, e, r, s.
        ("topics = 'orders-topic'", "topics"),
        ("topics = ('bad topic!',)", "topic"),
        ("topics = ('t' * 300,)", "topic"),
        ("batch_max_seconds = float('inf')", "batch_max_seconds"),
        ("batch_max_seconds = float('nan')", "batch_max_seconds"),
        ("batch_max_records = '500'", "batch_max_records"),
        ("retry = RetryPolicy(attempts=1.5)", "attempts"),
    ],
)
def test_bad_consumer_job_settings_are_refused_before_kafka(
    tmp_path: Path, sqlite_url: str, body: str, names: str
) -> None:
    """Guards against: `_check_job` accepting settings that later crash the
    run (OverflowError, ValueError, TypeError) after a run was recorded, or
    that make the consumer subscribe to nonsense and idle forever."""
    job = _variant(tmp_path, body)
    result = ledger_command(
        ["consume", str(job), "--bootstrap-servers", f"127.0.0.1:{_closed_port()}"],
        url=sqlite_url,
        cwd=tmp_path,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2, result.stderr
    assert "did not answer" not in result.stderr, (
        f"the job setting `{body}` was accepted: {result.stderr}"
    )
    assert names in result.stderr, result.stderr


def test_an_empty_member_name_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    """Guards against: `--member ""` silently running as the host name."""
    result = ledger_command(
        [
            "consume", str(STREAM_JOB), "--member", "",
            "--bootstrap-servers", f"127.0.0.1:{_closed_port()}",
        ],
        url=sqlite_url,
        cwd=tmp_path,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--member" in result.stderr, result.stderr


@pytest.mark.kafka
@pytest.mark.slow
def test_two_groups_never_share_a_run(tmp_path: Path, sqlite_url: str) -> None:
    """Guards against: the run key `kafka:NAME:VERSION:GROUP/MEMBER`, where
    group `g/x` with member `m` and group `g` with member `x/m` are the same
    key, so a consumer of one group resumes (and closes as crashed) the
    other group's unfinished run."""
    require_broker()
    topic, group = new_names("attack-key")
    create_topic(topic, 1)
    produce(topic, [{"n": n} for n in range(20)], 1)
    sink = tmp_path / "sink.sqlite"

    # ConsumerProcess names its log after the member: `consumer-x/m-...`.
    (tmp_path / "consumer-x").mkdir()

    # Group `G/x`, member `m`: killed inside its first batch, run left open.
    first = ConsumerProcess(
        url=sqlite_url, topic=topic, group=f"{group}/x", sink=sink,
        member="m", folder=tmp_path,
        env={"LEDGER_FAULT": "in_batch:consume:0"},
    )  # fmt: skip
    assert first.wait() == -9, first.tail()

    # Group `G`, member `x/m`: another group, another member.
    second = ConsumerProcess(
        url=sqlite_url, topic=topic, group=group, sink=sink,
        member="x/m", folder=tmp_path, until_idle=1.5,
    )  # fmt: skip
    assert second.wait() == 0, second.tail()
    run_id = second.summary()["run_id"]

    shown = ledger_command(["status", "--json"], url=sqlite_url, cwd=tmp_path)
    runs = {r["run_id"]: r for r in orjson.loads(shown.stdout)}
    assert runs[run_id]["consumer"]["group"] == group, (
        f"group {group}'s consumer resumed group {group}/x's run: "
        f"{runs[run_id]['consumer']}"
    )
