"""The example consumer: flights rows replayed into a topic, enriched by the
file import's own code, written to a sink keyed by topic, partition and
offset, on a real broker."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import orjson
import pytest
from conftest import FLIGHTS_JOB, REPO, ledger_command
from kafka_support import BOOTSTRAP, new_names, require_broker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROWS = 3_000
CONSUMER_JOB = REPO / "examples" / "flights_consumer.py"


def test_flights_consumer_enriches_like_the_file_import(
    tmp_path: Path, sqlite_url: str
) -> None:
    require_broker()
    topic, group = new_names("flights")
    sink = tmp_path / "stream.sqlite"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
        "FLIGHTS_TOPIC": topic,
        "FLIGHTS_GROUP": group,
        "FLIGHTS_SINK": str(sink),
    }
    published = subprocess.run(
        [sys.executable, str(CONSUMER_JOB), "publish", "--limit", str(ROWS)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    assert orjson.loads(published.stdout) == {"topic": topic, "published": ROWS}

    consumed = ledger_command(
        ["consume", str(CONSUMER_JOB), "--bootstrap-servers", BOOTSTRAP,
         "--until-idle", "1.5", "--json"],
        url=sqlite_url, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert consumed.returncode == 0, consumed.stderr
    summary = orjson.loads(consumed.stdout)
    assert summary["messages"] == ROWS

    # The same rows through the file import's functions, in this process.
    flights = _load_flights_module()
    planes = flights.load_planes(flights.data_folder() / "planes.csv")
    expected: dict[int, str] = {}
    rejected: Counter[str] = Counter()
    for number, line in enumerate(_first_lines(flights, ROWS)):
        try:
            row = flights.enrich_row(flights.parse_row(line), planes, Counter())
        except flights.Reject as rejection:
            rejected[rejection.reason] += 1
            continue
        expected[number] = row["delay_category"]
    assert summary["quarantined"] == sum(rejected.values())

    # Every accepted row is in the sink once, with the same enrichment; the
    # message key is the row number.
    db = sqlite3.connect(sink)
    rows = db.execute("SELECT COUNT(*), COUNT(DISTINCT partition || ':' || offset) "
                      "FROM flights_stream").fetchone()  # fmt: skip
    assert rows == (len(expected), len(expected))
    categories = Counter(
        category
        for (category,) in db.execute("SELECT delay_category FROM flights_stream")
    )
    db.close()
    assert categories == Counter(expected.values())

    # The quarantine holds the same reasons the file import would give.
    listed = ledger_command(["quarantine", "list", "--json"], url=sqlite_url,
                            cwd=tmp_path)  # fmt: skip
    reasons = Counter(q["reason"] for q in orjson.loads(listed.stdout)["records"])
    assert reasons == rejected


def _load_flights_module():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("_flights_for_test", FLIGHTS_JOB)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_flights_for_test"] = module
    spec.loader.exec_module(module)
    return module


def _first_lines(flights, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    zip_path = flights.data_folder() / "flights.csv.zip"
    with zipfile.ZipFile(zip_path) as archive:
        member = archive.namelist()[0]
        with io.TextIOWrapper(archive.open(member), encoding="utf-8") as rows:
            next(rows)
            return [next(rows).rstrip("\n") for _ in range(count)]
