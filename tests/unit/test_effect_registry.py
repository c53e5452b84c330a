"""The effect registry's refusals and its record keys, on a real SQLite
ledger: what a job author meets before any downstream is called."""

from __future__ import annotations

from uuid import uuid4

import pytest

from ledger import Record
from ledger.config import parse_ledger_url
from ledger.effects import (
    EffectKeyReused,
    EffectPolicy,
    EffectRegistry,
    EffectUndeclared,
)
from ledger.keys import file_site
from ledger.store import opened


def _registry(ledger: object, run_id: object) -> EffectRegistry:
    return EffectRegistry(
        ledger,  # type: ignore[arg-type]
        run_id,  # type: ignore[arg-type]
        {"bill": EffectPolicy(honours_keys=True)},
        lambda step: file_site(run_id, "ab" * 32, step),  # type: ignore[arg-type]
    )


def test_record_keys_are_stable_and_never_an_effects_key(sqlite_url: str) -> None:
    run_id = uuid4()
    with opened(parse_ledger_url(sqlite_url)) as ledger:
        first, again = _registry(ledger, run_id), _registry(ledger, run_id)
        first.at("load")
        again.at("load")
        record = Record(number=7, position=7, data="x")

        # The same record, step and run: the same key, from any registry.
        assert first.record_key(record) == again.record_key(record)
        assert first.key("bill", record) == again.key("bill", record)

        # A record's own key is not its effect's, nor another record's.
        assert first.record_key(record) != first.key("bill", record)
        other = Record(number=8, position=8, data="x")
        assert first.record_key(record) != first.record_key(other)

        # Another step, another key.
        again.at("send")
        assert first.record_key(record) != again.record_key(record)


def test_undeclared_and_unbound_effects_are_refused_naming_the_fix(
    sqlite_url: str,
) -> None:
    calls: list[str] = []
    with opened(parse_ledger_url(sqlite_url)) as ledger:
        registry = _registry(ledger, uuid4())
        registry.at("load")
        record = Record(number=1, position=1, data="x")
        with pytest.raises(EffectUndeclared, match="add it to the job's `effects`"):
            registry.call("fax", record, calls.append)
        with pytest.raises(EffectUndeclared, match="an effect needs a name"):
            registry.call("", record, calls.append)
        with pytest.raises(EffectUndeclared, match="made outside a run's work"):
            registry.call("bill", record, calls.append)
    assert calls == []


def test_the_registry_forgets_outcomes_once_the_store_holds_them(
    sqlite_url: str,
) -> None:
    calls: list[str] = []
    with opened(parse_ledger_url(sqlite_url)) as ledger:
        registry = _registry(ledger, uuid4())
        registry.bind(1, "attempt 1", lambda: None)
        registry.at("load")
        records = [Record(number=n, position=n, data=n) for n in range(1, 51)]
        for record in records:
            registry.begin_record()
            registry.call("bill", record, lambda key: calls.append(key) or key)
        assert registry.pending_outcomes() == 50
        registry.flush()
        assert registry.pending_outcomes() == 0

        # The store answers for them now: nothing is called again.
        for record in records:
            registry.begin_record()
            assert registry.call("bill", record, calls.append) in calls
    assert len(calls) == 50


def test_one_effect_made_twice_for_one_record_needs_parts(sqlite_url: str) -> None:
    calls: list[str] = []
    with opened(parse_ledger_url(sqlite_url)) as ledger:
        registry = _registry(ledger, uuid4())
        registry.bind(1, "attempt 1", lambda: None)
        registry.at("load")
        record = Record(number=1, position=1, data="x")
        registry.begin_record()
        registry.call("bill", record, calls.append)
        with pytest.raises(EffectKeyReused, match="pass a different `part`"):
            registry.call("bill", record, calls.append)
        registry.call("bill", record, calls.append, part="line 2")

        # The handler tried again (a consumer's retry) starts afresh.
        registry.begin_record()
        registry.call("bill", record, calls.append)
    assert len(calls) == 2
