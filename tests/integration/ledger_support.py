"""What the integration tests read back from a ledger: the runs as
`ledger status --json` shows them, and a run's stored events."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from conftest import ledger_command

from ledger.config import parse_ledger_url
from ledger.store import opened


def run_statuses(url: str, cwd: Path) -> list[dict[str, Any]]:
    """`ledger status --json`; no runs while no job has created the ledger."""
    shown = ledger_command(["status", "--json"], url=url, cwd=cwd)
    if shown.returncode == 2 and "run a job first" in shown.stderr:
        return []
    assert shown.returncode == 0, shown.stderr
    runs: list[dict[str, Any]] = orjson.loads(shown.stdout)
    return runs


def latest_run_id(url: str, cwd: Path) -> str:
    runs = run_statuses(url, cwd)
    assert runs, "no run in the ledger"
    return str(runs[0]["run_id"])


def run_events(url: str, run_id: str) -> list[Any]:
    """The run's stored events, in order, as the write side reads them."""
    with opened(parse_ledger_url(url)) as ledger:
        return list(ledger.repository.event_store.get(UUID(run_id)))


def event_names(url: str, run_id: str, *, heartbeats: bool = True) -> list[str]:
    """The names of the run's stored events; without a live worker's lease
    renewals when `heartbeats` is False."""
    names = [type(event).__name__ for event in run_events(url, run_id)]
    return [n for n in names if heartbeats or n != "LeaseRenewed"]


def event_steps(url: str, run_id: str) -> list[tuple[str, str | None]]:
    """Each stored event's name and the step it names, if any."""
    return [
        (type(event).__name__, getattr(event, "step", None))
        for event in run_events(url, run_id)
    ]
