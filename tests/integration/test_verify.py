"""`ledger verify` against a ledger edited behind its back, on both stores.

A real run (with quarantined records and an operator's discard) is recorded;
then its stored events are edited straight in the database, the way
someone with write access to the tables would: one field changed in place,
an event changed together with a recomputed hash, an event deleted. Each
time `verify` names the first event that does not match, and exits 1.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import psycopg
import pytest
from conftest import NUMBERS_JOB, ledger_command, write_numbers
from ledger_support import latest_run_id

from ledger.chain import event_hash
from ledger.config import parse_ledger_url


class RawEvents:
    """The events table, read and written with the database's own driver."""

    def __init__(self, url: str) -> None:
        self.location = parse_ledger_url(url)

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        if self.location.sqlite_path is not None:
            conn: Any = sqlite3.connect(self.location.sqlite_path)
        else:
            conn = psycopg.connect(self.location.url)
        try:
            yield conn
            conn.commit()
        finally:
            conn.close()

    @property
    def _table(self) -> str:
        return "stored_events" if self.location.sqlite_path else "ledger_events"

    def _id(self, stream: str) -> Any:
        # The library keeps a stream id as bare hex text on SQLite.
        return UUID(stream).hex if self.location.sqlite_path else UUID(stream)

    def _mark(self) -> str:
        return "?" if self.location.sqlite_path else "%s"

    def states(self, stream: str) -> list[tuple[int, str, bytes]]:
        m = self._mark()
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT originator_version, topic, state FROM {self._table} "
                f"WHERE originator_id = {m} ORDER BY originator_version",
                (self._id(stream),),
            ).fetchall()
        return [(int(v), str(t), bytes(s)) for v, t, s in rows]

    def write(self, stream: str, version: int, state: bytes) -> None:
        m = self._mark()
        with self._connect() as conn:
            conn.execute(
                f"UPDATE {self._table} SET state = {m} "
                f"WHERE originator_id = {m} AND originator_version = {m}",
                (state, self._id(stream), version),
            )

    def delete(self, stream: str, version: int) -> None:
        m = self._mark()
        with self._connect() as conn:
            conn.execute(
                f"DELETE FROM {self._table} "
                f"WHERE originator_id = {m} AND originator_version = {m}",
                (self._id(stream), version),
            )


def _recorded_run(tmp_path: Path, url: str) -> str:
    numbers = write_numbers(tmp_path / "n.txt", 300, bad=(7, 150))
    ran = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "25",
         "--no-progress", "--param", f"output={tmp_path / 'out.sqlite'}"],
        url=url, cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    run_id = latest_run_id(url, tmp_path)

    # An operator's decision is chained like the worker's events.
    listed = ledger_command(["quarantine", "list", "--json"], url=url, cwd=tmp_path)
    first = orjson.loads(listed.stdout)["records"][0]["quarantine_id"]
    discarded = ledger_command(
        ["quarantine", "discard", first, "--reason", "audit drill", "--as", "carol"],
        url=url, cwd=tmp_path,
    )  # fmt: skip
    assert discarded.returncode == 0, discarded.stderr
    return run_id


def _verify(url: str, cwd: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    shown = ledger_command(["verify", *args, "--json"], url=url, cwd=cwd)
    assert shown.stderr == ""
    text = ledger_command(["verify", *args], url=url, cwd=cwd).stdout
    return shown.returncode, orjson.loads(shown.stdout), text


def _checkpoint(raw: RawEvents, run_id: str) -> tuple[int, str, bytes]:
    checkpoints = [e for e in raw.states(run_id) if e[1].endswith("BatchCheckpointed")]
    return checkpoints[3]


def test_an_untouched_ledger_verifies(tmp_path: Path, ledger_url: str) -> None:
    run_id = _recorded_run(tmp_path, ledger_url)
    raw = RawEvents(ledger_url)
    events = raw.states(run_id)

    # Every event carries its chain keys, last; the first links to zeros.
    assert all(re.search(rb',"prev_hash":"[0-9a-f]{64}","hash":"[0-9a-f]{64}"\}$', s)
               for _, _, s in events)  # fmt: skip
    assert orjson.loads(events[0][2])["prev_hash"] == "0" * 64
    assert events[-1][1].endswith("RecordDiscarded")
    for (_, _, before), (_, _, after) in itertools.pairwise(events):
        assert orjson.loads(after)["prev_hash"] == orjson.loads(before)["hash"]

    code, whole, text = _verify(ledger_url, tmp_path)
    assert code == 0, whole
    assert whole["intact"] is True
    assert whole["events"] >= len(events)
    assert "every chain holds" in text

    # One run: its head is the hash its last stored event recorded.
    code, one, text = _verify(ledger_url, tmp_path, run_id[:8])
    assert code == 0
    [head] = [s for s in one["streams_checked"] if s["stream"] == run_id]
    assert head["events"] == len(events)
    assert head["head"] == orjson.loads(events[-1][2])["hash"]
    assert head["head"] in text


def test_an_event_edited_in_place_is_named(tmp_path: Path, ledger_url: str) -> None:
    run_id = _recorded_run(tmp_path, ledger_url)
    raw = RawEvents(ledger_url)
    version, _, state = _checkpoint(raw, run_id)

    # A checkpoint that claims one record fewer than it covered.
    edited = re.sub(rb'"records":(\d+)', lambda m: b'"records":%d' % (int(m[1]) - 1),
                    state, count=1)  # fmt: skip
    assert edited != state
    raw.write(run_id, version, edited)

    for args in ((), (run_id,)):
        code, found, text = _verify(ledger_url, tmp_path, *args)
        assert code == 1
        assert found["intact"] is False
        [broken] = found["breaks"]
        assert (broken["stream"], broken["version"]) == (run_id, version)
        assert broken["topic"].endswith("Run.BatchCheckpointed")
        assert "changed after it was recorded" in broken["problem"]
        assert f"event {version} (Run.BatchCheckpointed)" in text


def test_an_event_rewritten_with_a_new_hash_breaks_the_next_link(
    tmp_path: Path, ledger_url: str
) -> None:
    run_id = _recorded_run(tmp_path, ledger_url)
    raw = RawEvents(ledger_url)
    version, topic, state = _checkpoint(raw, run_id)

    # Someone who knows how the hash is made recomputes it for the edit:
    # the event matches itself, so the next one's link is what breaks.
    body = re.sub(rb',"hash":"[0-9a-f]{64}"\}$', b"}", state)
    body = body.replace(b'"written":', b'"written":1', 1)
    digest = event_hash(UUID(run_id), version, topic, body)
    raw.write(run_id, version, body[:-1] + b',"hash":"%s"}' % digest.encode())

    code, found, _ = _verify(ledger_url, tmp_path, run_id)
    assert code == 1
    [broken] = found["breaks"]
    assert broken["version"] == version + 1
    assert "event before it was changed" in broken["problem"]


def test_a_deleted_event_is_named(tmp_path: Path, ledger_url: str) -> None:
    run_id = _recorded_run(tmp_path, ledger_url)
    raw = RawEvents(ledger_url)
    version, _, _ = _checkpoint(raw, run_id)
    raw.delete(run_id, version)

    code, found, text = _verify(ledger_url, tmp_path)
    assert code == 1
    [broken] = found["breaks"]
    assert (broken["stream"], broken["version"]) == (run_id, version + 1)
    assert broken["problem"] == f"event {version} is missing"
    assert "BROKEN" in text


def test_removed_chain_keys_are_named(tmp_path: Path, ledger_url: str) -> None:
    run_id = _recorded_run(tmp_path, ledger_url)
    raw = RawEvents(ledger_url)
    version, _, state = _checkpoint(raw, run_id)

    # An event made to look as if it predated chains.
    stripped = re.sub(rb',"prev_hash":"[0-9a-f]{64}","hash":"[0-9a-f]{64}"\}$',
                      b"}", state)  # fmt: skip
    raw.write(run_id, version, stripped)

    code, found, _ = _verify(ledger_url, tmp_path, run_id)
    assert code == 1
    [broken] = found["breaks"]
    assert broken["version"] == version
    assert broken["problem"] == "its hash keys were removed"


@pytest.mark.parametrize("ref", ["zzzz", "0000ffff"])
def test_bad_input_is_refused(tmp_path: Path, ledger_url: str, ref: str) -> None:
    _recorded_run(tmp_path, ledger_url)
    shown = ledger_command(["verify", ref], url=ledger_url, cwd=tmp_path)
    assert shown.returncode == 2
    assert shown.stderr.startswith("error: ")
    assert "ledger status" in shown.stderr


def test_no_ledger_is_refused_not_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nothing' / 'ledger.sqlite'}"
    shown = ledger_command(["verify"], url=url, cwd=tmp_path)
    assert shown.returncode == 2
    assert "no ledger file" in shown.stderr
    assert not (tmp_path / "nothing" / "ledger.sqlite").exists()
