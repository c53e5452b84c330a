"""Sealing payloads on a real SQLite ledger: what is sealed, how master keys
are read, and a batch that races a discard.

The integration tests (`tests/integration/test_sealed_payloads.py`) run
the same through the `ledger` command on both stores; these pin the
edges: payloads too large or absent, master keys in every accepted
spelling and refused ones, and the keys a replayed batch must not keep.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from uuid import uuid4

import pytest

from ledger.config import parse_ledger_url
from ledger.payload_keys import KeyTable
from ledger.quarantine import discard
from ledger.run import Run, record_quarantine_id
from ledger.sealed_payloads import BatchSeals, seal_state
from ledger.sealing import (
    MASTER_KEY_ENV,
    SEALED_PAYLOAD_MAX_BYTES,
    MasterKeyError,
    PayloadDestroyed,
    check_master_key,
    destroy_payload_keys,
    master_key_fingerprint,
    open_sealed,
    seal_payloads,
)
from ledger.store import Ledger, opened
from ledger.worker import current_worker, lease_until


@pytest.fixture
def ledger(sqlite_url: str) -> Iterator[Ledger]:
    with opened(parse_ledger_url(sqlite_url)) as opened_ledger:
        yield opened_ledger


def test_a_payload_opens_as_it_was_sealed_and_only_as_its_record(
    ledger: Ledger,
) -> None:
    run_id = str(uuid4())
    payload = {"card": "4111", "lines": ["é", 2, None], "nested": {"k": 1.5}}
    sealed = seal_payloads(ledger, run_id, {"q1": payload, "q2": "text"})
    assert open_sealed(ledger, run_id, "q1", sealed["q1"]) == payload
    assert open_sealed(ledger, run_id, "q2", sealed["q2"]) == "text"

    # Every record gets a key and a nonce of its own.
    assert sealed["q1"]["key_id"] != sealed["q2"]["key_id"]
    assert sealed["q1"]["nonce"] != sealed["q2"]["nonce"]


def test_nothing_or_too_much_is_not_sealed(ledger: Ledger) -> None:
    huge = "x" * SEALED_PAYLOAD_MAX_BYTES
    sealed = seal_payloads(ledger, uuid4(), {"none": None, "huge": huge, "ok": 0})
    assert list(sealed) == ["ok"]
    assert len(KeyTable(ledger).live_of_runs()) == 1


@pytest.mark.parametrize(
    "spelling",
    [
        lambda key: key.hex(),
        lambda key: key.hex().upper(),
        lambda key: base64.b64encode(key).decode(),
        lambda key: base64.urlsafe_b64encode(key).decode().rstrip("="),
    ],
    ids=["hex", "HEX", "base64", "urlsafe-unpadded"],
)
def test_a_master_key_is_read_in_every_spelling_and_wraps_the_keys(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, spelling: Callable[[bytes], str]
) -> None:
    key = os.urandom(32)
    monkeypatch.setenv(MASTER_KEY_ENV, spelling(key))
    run_id = str(uuid4())
    sealed = seal_payloads(ledger, run_id, {"q": {"a": 1}})
    (row,) = KeyTable(ledger).of_record(run_id, "q")
    assert row.wrapped_by == master_key_fingerprint(key)
    assert open_sealed(ledger, run_id, "q", sealed["q"]) == {"a": 1}


@pytest.mark.parametrize(
    "value", ["short", "a" * 63, base64.b64encode(os.urandom(16)).decode(), "é" * 44]
)
def test_a_malformed_master_key_is_refused_without_being_shown(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(MASTER_KEY_ENV, value)
    with pytest.raises(MasterKeyError) as refused:
        check_master_key()
    assert "is not a 256-bit key" in str(refused.value)
    assert "os.urandom(32)" in str(refused.value)
    assert value not in str(refused.value)


def _run_with_record() -> tuple[Run, int]:
    run = Run.start(
        run_id=uuid4(), job="j", job_version="1", job_ref="j.py", input={},
        params={"batch_size": 10}, input_key="k", steps=["s"],
    )  # fmt: skip
    attempt = run.start_attempt(current_worker(), lease_until())
    run.start_step(attempt, "s")
    run.start_batch(attempt, "s", 0, 1, lease_until())
    return run, attempt


def test_a_replayed_batch_does_not_make_a_discarded_payload_readable(
    ledger: Ledger,
) -> None:
    run, attempt = _run_with_record()
    quarantine_id = record_quarantine_id(run.id, "s", 7)

    # Quarantined and discarded: the replay seals nothing for it.
    run.quarantine(attempt, "s", 0, 7, "bad", "", "x7")
    discard(run, quarantine_id, "alice", "bad row")
    assert BatchSeals(ledger, run, {quarantine_id: "x7"}).sealed == {}

    # Sealed while pending, discarded before the commit landed: recorded
    # without it, and its new key destroyed once the commit is saved.
    fresh, attempt = _run_with_record()
    quarantine_id = record_quarantine_id(fresh.id, "s", 7)
    fresh.quarantine(attempt, "s", 0, 7, "bad", "", "x7")
    seals = BatchSeals(ledger, fresh, {quarantine_id: "x7"})
    assert seals.get(fresh, quarantine_id) is not None
    discard(fresh, quarantine_id, "bob", "raced")
    assert seals.get(fresh, quarantine_id) is None
    seals.settle(fresh)
    state = seal_state(ledger, str(fresh.id), quarantine_id)
    assert (state.state, state.destroyed_why) == (
        "destroyed", "its record was discarded",
    )  # fmt: skip
    with pytest.raises(PayloadDestroyed):
        open_sealed(ledger, fresh.id, quarantine_id, seals.sealed[quarantine_id])


def test_destroying_keys_names_what_it_destroyed_once(ledger: Ledger) -> None:
    run_id = str(uuid4())
    seal_payloads(ledger, run_id, {"a": 1, "b": 2, "c": 3})
    assert destroy_payload_keys(ledger, run_id, ["a", "zz"], why="one") == ["a"]
    assert destroy_payload_keys(ledger, run_id, [], why="none") == []
    assert destroy_payload_keys(ledger, run_id) == ["b", "c"]
    assert destroy_payload_keys(ledger, run_id) == []
    assert seal_state(ledger, run_id, "a").destroyed_why == "one"
    assert seal_state(ledger, run_id, "nothing").state == "none"
