"""Source positions saved with checkpoints: atomic, forward-only, per store."""

from __future__ import annotations

from uuid import uuid4

import pytest

from ledger.config import parse_ledger_url
from ledger.errors import LedgerError
from ledger.positions import (
    PositionRefused,
    SourcePosition,
    load_positions,
    save_with_positions,
)
from ledger.run import Run
from ledger.store import opened

WORKER = {"host": "h", "boot_id": "", "pid": 1, "pid_started": "1"}
P0 = SourcePosition("billing", "invoices", 0)
P1 = SourcePosition("billing", "invoices", 1)
P2 = SourcePosition("billing", "invoices.v2", 2)


def _checkpoint(run: Run, attempt: int, batch: int) -> None:
    run.checkpoint_batch(
        attempt=attempt, step="consume", batch=batch, first_record=batch * 10 + 1,
        last_record=batch * 10 + 10, position=batch * 10 + 10,
        position_kind="offset", records=10, written=10, quarantined=0,
        counters={}, lease_until="2030-01-01T00:00:00+00:00",
    )  # fmt: skip


def test_positions_move_with_their_checkpoint_or_not_at_all(ledger_url: str) -> None:
    with opened(parse_ledger_url(ledger_url)) as ledger:
        run = Run.start(
            run_id=uuid4(), job="billing", job_version="1", job_ref="b.py",
            input={}, params={}, input_key="k", steps=["consume"],
        )  # fmt: skip
        attempt = run.start_attempt(WORKER, "t")
        ledger.save(run)

        # One transaction: the checkpoint and three partitions' positions.
        _checkpoint(run, attempt, 0)
        save_with_positions(ledger, run, {P0: 10, P1: 7, P2: 3})
        assert load_positions(ledger, "billing") == {P0: 10, P1: 7, P2: 3}
        assert load_positions(ledger, "other") == {}

        # A position that does not move forward refuses the whole save.
        _checkpoint(run, attempt, 1)
        with pytest.raises(PositionRefused, match=r"invoices\[1\]->7"):
            save_with_positions(ledger, run, {P0: 20, P1: 7})
        stored: Run = ledger.repository.get(run.id)
        assert stored.batches_done == {"consume": 1}
        assert load_positions(ledger, "billing") == {P0: 10, P1: 7, P2: 3}

        # Going on from what the store holds works.
        _checkpoint(stored, attempt, 1)
        save_with_positions(ledger, stored, {P0: 20, P1: 8})
        assert load_positions(ledger, "billing") == {P0: 20, P1: 8, P2: 3}


def test_names_round_trip_with_colons_in_topics() -> None:
    odd = SourcePosition("g", "ns:topic:x", 12)
    assert SourcePosition.from_name(odd.name) == odd


@pytest.mark.parametrize(("group", "partition"), [("a:b", 0), ("", 0), ("g", -1)])
def test_bad_position_names_are_refused(group: str, partition: int) -> None:
    with pytest.raises(LedgerError):
        SourcePosition(group, "t", partition)
