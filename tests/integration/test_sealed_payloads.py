"""Sealed payloads: quarantined records kept whole, encrypted, and shredded.

The accounts job (`tests/jobs/accounts.py`) refuses accounts whose card
starts with `bad` and names `card` a sensitive field, so a quarantined
account's preview never holds its card; its staging is dropped once the
run completes, so a promotion finds the record's source gone. Every card
planted here is a unique string: found nowhere in the ledger's database,
raw, while the record waits; written to the job's output by a promotion
made from the sealed payload; unreadable for good once its key is
destroyed by a discard (or an archive), with every event as it was.

Tampering (a changed ciphertext, a sealed payload copied into another
record's event, a key row moved to another record) and a wrong, missing
or malformed LEDGER_MASTER_KEY are refused, naming what to do. A
consumer's message gone from its topic and from its quarantine copy is
promoted from its sealed payload too.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
import psycopg
import pytest
from conftest import REPO, ledger_command

from ledger.config import parse_ledger_url
from ledger.payload_keys import PAYLOAD_KEYS_TABLE
from ledger.run import Run
from ledger.sealed_payloads import destroy_payload_keys
from ledger.sealing import (
    MASTER_KEY_ENV,
    PayloadDestroyed,
    PayloadTampered,
    master_key_fingerprint,
    open_sealed,
)
from ledger.store import opened

ACCOUNTS_JOB = REPO / "tests" / "jobs" / "accounts.py"
BAD_LINES = (3, 17, 25)
QUARANTINED = "ledger.run:Run.RecordQuarantined"


def _accounts(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    """40 accounts; those on BAD_LINES have a card the job refuses, each a
    unique string planted to be looked for."""
    cards = {line: f"bad-{uuid4().hex}" for line in BAD_LINES}
    lines = [
        orjson.dumps({"id": n, "name": f"holder {n}", "card": cards.get(n, f"41{n}")})
        for n in range(1, 41)
    ]
    path = tmp_path / "accounts.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, cards


def _run(
    tmp_path: Path, url: str, env: dict[str, str] | None = None
) -> tuple[str, dict[int, str], dict[int, str]]:
    """A completed run; (run id, quarantine id by line, card by line)."""
    source, cards = _accounts(tmp_path)
    done = ledger_command(
        ["run", str(ACCOUNTS_JOB), "--input", str(source), "--batch-size", "10",
         "--no-progress", "--param", f"output={tmp_path / 'accounts.sqlite'}",
         "--param", f"lenient_marker={tmp_path / 'lenient'}", "--json"],
        url=url, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id: str = orjson.loads(done.stdout)["run_id"]
    listed = _json(url, tmp_path, "quarantine", "list", "--run", run_id)
    ids = {r["record"]: r["quarantine_id"] for r in listed["records"]}
    assert sorted(ids) == list(BAD_LINES)
    return run_id, ids, cards


def _json(url: str, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    shown = ledger_command([*args, "--json"], url=url, cwd=cwd, env=env)
    assert shown.returncode == 0, shown.stderr
    return orjson.loads(shown.stdout)


def _written(tmp_path: Path) -> dict[int, str]:
    with sqlite3.connect(tmp_path / "accounts.sqlite") as db:
        return dict(db.execute("SELECT id, card FROM accounts").fetchall())


def _raw_ledger(url: str) -> bytes:
    """Everything the ledger's database holds, as stored: the SQLite file
    and its write-ahead log byte for byte; on PostgreSQL every value of
    every table, bytea as its bytes."""
    location = parse_ledger_url(url)
    if location.sqlite_path is not None:
        files = [location.sqlite_path, Path(f"{location.sqlite_path}-wal")]
        return b"".join(path.read_bytes() for path in files if path.exists())
    found: list[bytes] = []
    with psycopg.connect(url) as db:
        tables = db.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE "
            "table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            query = f'SELECT * FROM "{schema}"."{table}"'
            for row in db.execute(query).fetchall():
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        found.append(bytes(value))
                    else:
                        found.append(str(value).encode())
    return b"\n".join(found)


def _execute(url: str, statement: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """One statement on the ledger's own database, `?` placeholders;
    `{events}` and `{keys}` name its tables."""
    location = parse_ledger_url(url)
    kind = "postgresql" if location.is_postgres else "sqlite"
    statement = statement.format(
        events=location.events_table, keys=PAYLOAD_KEYS_TABLE[kind]
    )
    if location.sqlite_path is not None:
        with sqlite3.connect(location.sqlite_path) as db:
            return db.execute(statement, args).fetchall()
    with psycopg.connect(url) as pg:
        cursor = pg.execute(statement.replace("?", "%s"), args)
        return cursor.fetchall() if cursor.description else []


def _events(url: str) -> list[tuple[int, str, int, str, bytes]]:
    """Every stored event, as stored, in log order."""
    with opened(parse_ledger_url(url)) as ledger:
        return [
            (n.id, str(n.originator_id), n.originator_version, n.topic, n.state)
            for n in ledger.recorder.select_notifications(start=1, limit=100_000)
        ]


def _sealed(url: str, run_id: str, quarantine_id: str) -> dict[str, str]:
    """The sealed payload the record's quarantine event holds."""
    with opened(parse_ledger_url(url)) as ledger:
        run: Run = ledger.repository.get(UUID(run_id))
        version = run.sealed_payloads[quarantine_id]
        (event,) = ledger.repository.event_store.get(
            run.id, gt=version - 1, lte=version
        )
    sealed: dict[str, str] = event.sealed  # type: ignore[attr-defined]
    return sealed


def _open(url: str, run_id: str, quarantine_id: str, sealed: dict[str, str]) -> Any:
    with opened(parse_ledger_url(url)) as ledger:
        return open_sealed(ledger, run_id, quarantine_id, sealed)


def _promote(
    url: str, cwd: Path, quarantine_id: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return ledger_command(
        ["quarantine", "promote", quarantine_id, "--as", "erin"],
        url=url, cwd=cwd, env=env,
    )  # fmt: skip


def test_a_quarantined_payload_is_sealed_and_promoted_once_its_source_is_gone(
    tmp_path: Path, ledger_url: str
) -> None:
    run_id, ids, cards = _run(tmp_path, ledger_url)

    # The preview is redacted; the whole record is kept sealed.
    shown = _json(ledger_url, tmp_path, "quarantine", "show", ids[17])
    assert shown["payload"] == {"id": 17, "name": "holder 17", "card": "[redacted]"}
    assert shown["sealed_payload"] == {
        "state": "sealed", "wrapped": False, "destroyed_at": None,
        "destroyed_why": None,
    }  # fmt: skip
    text = ledger_command(["quarantine", "show", ids[17]], url=ledger_url, cwd=tmp_path)
    assert "sealed       kept whole, encrypted (AES-256-GCM)" in text.stdout

    # No planted card is anywhere in the database, raw; what is in clear
    # (the detail) is found there, so the search would see a card.
    raw = _raw_ledger(ledger_url)
    assert b"account 17 has a refused card" in raw
    assert [card for card in cards.values() if card.encode() in raw] == []
    sealed = _sealed(ledger_url, run_id, ids[17])
    assert sorted(sealed) == ["alg", "ciphertext", "key_id", "nonce"]
    assert sealed["key_id"].encode() in raw

    # The staging is gone with the completed run: the sealed payload, whole,
    # is what the job's code gets, and it writes the real card.
    (tmp_path / "lenient").touch()
    promoted = _json(
        ledger_url, tmp_path, "quarantine", "promote", ids[17], "--as", "erin"
    )
    assert (promoted["outcome"], promoted["step"], promoted["written"]) == (
        "written", "check", 1,
    )  # fmt: skip
    assert _written(tmp_path)[17] == cards[17]


def test_a_discard_destroys_the_key_and_leaves_the_events_as_they_were(
    tmp_path: Path, ledger_url: str
) -> None:
    run_id, ids, cards = _run(tmp_path, ledger_url)
    sealed = _sealed(ledger_url, run_id, ids[25])
    assert _open(ledger_url, run_id, ids[25], sealed)["card"] == cards[25]
    (stored_key,) = _execute(
        ledger_url, "SELECT key_bytes FROM {keys} WHERE key_id = ?", (sealed["key_id"],)
    )[0]
    before = _events(ledger_url)

    done = ledger_command(
        ["quarantine", "discard", ids[25], "--reason", "card revoked", "--as", "alice"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "the key of its sealed payload is destroyed" in done.stdout

    # The events: exactly one more, the decision; the rest byte for byte.
    after = _events(ledger_url)
    assert after[: len(before)] == before
    assert [event[3] for event in after[len(before) :]] == [
        "ledger.quarantine:RecordDiscarded"
    ]
    verified = ledger_command(["verify"], url=ledger_url, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The key is gone: the sealed payload can never be opened again.
    with pytest.raises(PayloadDestroyed) as destroyed:
        _open(ledger_url, run_id, ids[25], sealed)
    assert destroyed.value.destroyed_why == "discarded by alice: card revoked"
    assert "can never be read again" in str(destroyed.value)
    assert _execute(
        ledger_url, "SELECT key_bytes FROM {keys} WHERE key_id = ?", (sealed["key_id"],)
    ) == [(None,)]
    if not parse_ledger_url(ledger_url).is_postgres:
        assert bytes(stored_key) not in _raw_ledger(ledger_url)

    # The audit trail says so, and keeps the rest.
    shown = _json(ledger_url, tmp_path, "quarantine", "show", ids[25])
    assert (shown["state"], shown["decision"]["by"]) == ("discarded", "alice")
    assert shown["payload"] == {"id": 25, "name": "holder 25", "card": "[redacted]"}
    seal = shown["sealed_payload"]
    assert (seal["state"], seal["destroyed_why"]) == (
        "destroyed", "discarded by alice: card revoked",
    )  # fmt: skip
    text = ledger_command(["quarantine", "show", ids[25]], url=ledger_url, cwd=tmp_path)
    assert "sealed       destroyed at " in text.stdout
    assert "discarded by alice: card revoked; the whole payload can never be read" in (
        text.stdout
    )

    # A promotion is refused; the others' keys are untouched.
    (tmp_path / "lenient").touch()
    refused = _promote(ledger_url, tmp_path, ids[25])
    assert refused.returncode == 2
    assert "was discarded by alice (card revoked)" in refused.stderr
    assert _open(ledger_url, run_id, ids[3], _sealed(ledger_url, run_id, ids[3]))


def test_destroyed_keys_are_final_and_destroying_them_is_idempotent(
    tmp_path: Path, ledger_url: str
) -> None:
    run_id, ids, _ = _run(tmp_path, ledger_url)
    location = parse_ledger_url(ledger_url)

    # What archiving a run calls: every key of the run, at once.
    with opened(location) as ledger:
        assert sorted(destroy_payload_keys(ledger, run_id)) == sorted(ids.values())
        assert destroy_payload_keys(ledger, run_id) == []
    shown = _json(ledger_url, tmp_path, "quarantine", "show", ids[3])
    assert shown["sealed_payload"]["destroyed_why"] == "its run was archived"

    # A pending record whose key is gone cannot be promoted from it.
    (tmp_path / "lenient").touch()
    before = len(_events(ledger_url))
    refused = _promote(ledger_url, tmp_path, ids[3])
    assert refused.returncode == 2
    assert f"record {ids[3]} cannot be promoted: step check's source no longer " in (
        refused.stderr
    )
    assert "its sealed payload cannot be opened: its key was destroyed at " in (
        refused.stderr
    )
    assert "(its run was archived), so the payload can never be read again" in (
        refused.stderr
    )
    assert f"discard it (`ledger quarantine discard {ids[3][:8]}" in refused.stderr
    assert len(_events(ledger_url)) == before

    # Destroyed again by a discard: the first time and reason stand.
    discarded = ledger_command(
        ["quarantine", "discard", ids[3], "--reason", "x"], url=ledger_url, cwd=tmp_path
    )
    assert discarded.returncode == 0, discarded.stderr
    assert "key of its sealed payload is destroyed" not in discarded.stdout
    shown = _json(ledger_url, tmp_path, "quarantine", "show", ids[3])
    assert shown["sealed_payload"]["destroyed_why"] == "its run was archived"


def test_a_discard_interrupted_before_its_key_went_is_finished_later(
    tmp_path: Path, ledger_url: str
) -> None:
    run_id, ids, _ = _run(tmp_path, ledger_url)
    location = parse_ledger_url(ledger_url)

    # Two discards recorded, and the process gone before their keys were.
    from ledger.quarantine import discard

    with opened(location) as ledger:
        run: Run = ledger.repository.get(UUID(run_id))
        discard(run, ids[3], "alice", "test row")
        discard(run, ids[17], "bob", "duplicate")
        ledger.save(run)
    for line in (3, 17):
        shown = _json(ledger_url, tmp_path, "quarantine", "show", ids[line])
        assert shown["sealed_payload"]["state"] == "sealed"

    # Discarding again is refused, and finishes the interrupted one.
    again = ledger_command(
        ["quarantine", "discard", ids[3], "--reason", "again"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 2
    assert "already discarded by alice (test row)" in again.stderr
    assert "left by an interrupted discard, is destroyed now" in again.stderr
    shown = _json(ledger_url, tmp_path, "quarantine", "show", ids[3])
    assert shown["sealed_payload"]["destroyed_why"] == "discarded by alice: test row"

    # A sweep finds the other; a second sweep finds nothing.
    swept = _json(ledger_url, tmp_path, "quarantine", "sweep-keys")
    assert swept == {"discarded": 1, "orphaned": 0}
    shown = _json(ledger_url, tmp_path, "quarantine", "show", ids[17])
    assert shown["sealed_payload"]["state"] == "destroyed"
    assert _json(ledger_url, tmp_path, "quarantine", "sweep-keys") == {
        "discarded": 0, "orphaned": 0,
    }  # fmt: skip
    pending = _json(ledger_url, tmp_path, "quarantine", "show", ids[25])
    assert pending["sealed_payload"]["state"] == "sealed"


def _flip(text: str) -> str:
    """Base64 text with its first character changed: still base64."""
    return ("B" if text[0] == "A" else "A") + text[1:]


def _rewrite_event(url: str, quarantine_id: str, sealed: dict[str, str]) -> None:
    """Replaces, in the database, the record's quarantine event's sealed
    payload: what someone who can write the database could do."""
    id_column = "notification_id" if parse_ledger_url(url).is_postgres else "rowid"
    rows = _execute(
        url,
        f"SELECT {id_column}, state FROM {{events}} WHERE topic = ?",
        (QUARANTINED,),
    )
    for row_id, state in rows:
        decoded = orjson.loads(bytes(state))
        if decoded["quarantine_id"] == quarantine_id:
            decoded["sealed"] = sealed
            _execute(
                url,
                f"UPDATE {{events}} SET state = ? WHERE {id_column} = ?",
                (orjson.dumps(decoded), row_id),
            )


def test_a_sealed_payload_changed_or_moved_to_another_record_does_not_open(
    tmp_path: Path, ledger_url: str
) -> None:
    run_id, ids, cards = _run(tmp_path, ledger_url)
    first, second = (
        _sealed(ledger_url, run_id, ids[3]),
        _sealed(ledger_url, run_id, ids[17]),
    )
    assert _open(ledger_url, run_id, ids[3], first)["card"] == cards[3]

    # A changed ciphertext or nonce does not authenticate.
    for changed in (
        {**first, "ciphertext": _flip(first["ciphertext"])},
        {**first, "nonce": _flip(first["nonce"])},
    ):
        with pytest.raises(PayloadTampered, match="does not authenticate"):
            _open(ledger_url, run_id, ids[3], changed)
    with pytest.raises(PayloadTampered, match="is malformed"):
        _open(ledger_url, run_id, ids[3], {**first, "nonce": "not base64!"})

    # Another record's sealed payload names that record's key.
    with pytest.raises(PayloadTampered, match=f"belongs to record {ids[17]}"):
        _open(ledger_url, run_id, ids[3], second)

    # Its key's row moved to this record too: the associated data, which
    # names the record, still refuses it.
    _execute(
        ledger_url,
        "UPDATE {keys} SET quarantine_id = ? WHERE key_id = ?",
        (ids[3], second["key_id"]),
    )
    with pytest.raises(PayloadTampered, match="does not authenticate"):
        _open(ledger_url, run_id, ids[3], second)

    # Through the command: a changed event is refused, naming why, and
    # `ledger verify` names the event.
    (tmp_path / "lenient").touch()
    _rewrite_event(ledger_url, ids[25], {
        **_sealed(ledger_url, run_id, ids[25]),
        "ciphertext": _flip(_sealed(ledger_url, run_id, ids[25])["ciphertext"]),
    })  # fmt: skip
    refused = _promote(ledger_url, tmp_path, ids[25])
    assert refused.returncode == 2
    assert "its sealed payload cannot be opened: its ciphertext does not " in (
        refused.stderr
    )
    assert ledger_command(["verify"], url=ledger_url, cwd=tmp_path).returncode == 1
    assert 25 not in _written(tmp_path)


def _master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_a_master_key_wraps_every_key_and_only_that_key_opens_them(
    tmp_path: Path, ledger_url: str
) -> None:
    master = _master_key()
    with_master = {MASTER_KEY_ENV: master}
    _, ids, cards = _run(tmp_path, ledger_url, env=with_master)

    # Each key is stored wrapped, named by the master key's fingerprint.
    fingerprint = master_key_fingerprint(base64.b64decode(master))
    rows = _execute(ledger_url, "SELECT key_bytes, wrapped_by FROM {keys}")
    assert len(rows) == len(BAD_LINES)
    assert {(len(bytes(key)), by) for key, by in rows} == {(12 + 32 + 16, fingerprint)}
    shown = _json(ledger_url, tmp_path, "quarantine", "show", ids[3], env=with_master)
    assert shown["sealed_payload"]["wrapped"] is True

    # Another master key, or none: refused, naming the one needed; nothing
    # is appended and no key is ever shown.
    (tmp_path / "lenient").touch()
    before = len(_events(ledger_url))
    other = _master_key()
    wrong = _promote(ledger_url, tmp_path, ids[3], env={MASTER_KEY_ENV: other})
    assert wrong.returncode == 2
    assert f"but the key of record {ids[3]} is wrapped by master key {fingerprint}" in (
        wrong.stderr
    )
    assert f"set {MASTER_KEY_ENV} to master key {fingerprint}" in wrong.stderr
    missing = _promote(ledger_url, tmp_path, ids[3], env={MASTER_KEY_ENV: ""})
    assert missing.returncode == 2
    assert f"and {MASTER_KEY_ENV} is not set; set {MASTER_KEY_ENV} to master key" in (
        missing.stderr
    )
    malformed = _promote(ledger_url, tmp_path, ids[3], env={MASTER_KEY_ENV: "x" * 40})
    assert malformed.returncode == 2
    assert f"{MASTER_KEY_ENV} is not a 256-bit key" in malformed.stderr
    for answer in (wrong, missing, malformed):
        assert master not in answer.stderr
        assert other not in answer.stderr
        assert "x" * 40 not in answer.stderr
    assert len(_events(ledger_url)) == before

    # With its master key, the record is promoted from its sealed payload.
    done = _promote(ledger_url, tmp_path, ids[3], env=with_master)
    assert done.returncode == 0, done.stderr
    assert _written(tmp_path)[3] == cards[3]


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.postgres
def test_a_message_gone_from_its_topic_and_its_copy_is_promoted_sealed(
    tmp_path: Path, postgres_url: str
) -> None:
    from kafka_support import (
        BOOTSTRAP,
        ConsumerProcess,
        create_topic,
        new_names,
        produce,
        read_topic,
        require_broker,
        sink_rows,
    )

    require_broker()
    topic, group = new_names("sealed")
    create_topic(topic, 2)
    secret = f"s3cret-{uuid4().hex}"
    values = [
        {"n": n, **({"poison": "flaky", "secret": secret} if n == 11 else {})}
        for n in range(30)
    ]
    placed = produce(topic, values, 2)
    flaky = tmp_path / "flaky"
    flaky.touch()
    sink = tmp_path / "sink.sqlite"
    env = {"STREAM_FLAKY_FILE": str(flaky)}
    consumer = ConsumerProcess(
        url=postgres_url, topic=topic, group=group, sink=sink, member="sealer",
        folder=tmp_path, until_idle=1.5, env=env,
    )  # fmt: skip
    assert consumer.wait() == 0, consumer.tail()

    # Quarantined with its secret redacted in the preview, and sealed.
    (record,) = _json(postgres_url, tmp_path, "quarantine", "list")["records"]
    shown = _json(postgres_url, tmp_path, "quarantine", "show", record["quarantine_id"])
    assert shown["payload"]["secret"] == "[redacted]"
    assert shown["sealed_payload"]["state"] == "sealed"
    assert secret.encode() not in _raw_ledger(postgres_url)

    # Gone from its topic (retention) and from the quarantine topic too.
    partition, offset = placed[11]
    copies = f"{topic}.quarantine"
    assert len(read_topic(copies)) == 1
    _delete_up_to_end(topic, BOOTSTRAP)
    _delete_up_to_end(copies, BOOTSTRAP)
    assert read_topic(copies) == []

    # The cause gone, the message is made from its sealed payload.
    flaky.unlink()
    promoted = _json(
        postgres_url, tmp_path, "quarantine", "promote", record["quarantine_id"],
        "--bootstrap-servers", BOOTSTRAP, "--as", "frank", env=env,
    )  # fmt: skip
    assert (promoted["outcome"], promoted["written"]) == ("written", 1), promoted
    rows = [row for row in sink_rows(sink) if row[:2] == (partition, offset)]
    assert rows == [(partition, offset, 11, 1)]


def _delete_up_to_end(topic: str, bootstrap: str) -> None:
    """What retention does to a whole topic: every record so far goes."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.records_to_delete import RecordsToDelete

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
            tps = [
                TopicPartition(topic, p["partition"]) for p in described["partitions"]
            ]
            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
            await consumer.start()
            try:
                ends = await consumer.end_offsets(tps)
            finally:
                await consumer.stop()
            await admin.delete_records(
                {tp: RecordsToDelete(end) for tp, end in ends.items()}
            )
        finally:
            await admin.close()

    asyncio.run(delete())
