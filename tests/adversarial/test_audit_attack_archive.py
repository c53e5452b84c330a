"""Audit attacks on `ledger archive` / `archive load` (hash chains + manifest).

Runs are recorded in the past with time-machine in a subprocess, as
tests/integration/test_archive.py does, then archived today.
"""

from __future__ import annotations

import gzip
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from conftest import (
    NUMBERS_JOB,
    ledger_command,
    ledger_in_the_past,
    write_numbers,
)
from eventsourcing.persistence import StoredEvent

from ledger.archiving import archive_runs
from ledger.chain import GENESIS, chained
from ledger.cli_archive import _candidates
from ledger.config import parse_ledger_url
from ledger.run import Run
from ledger.store import opened
from projections.access import read
from projections.tables import forget_run


def _old_run(tmp_path: Path, url: str, name: str = "old") -> str:
    numbers = write_numbers(tmp_path / f"{name}.txt", 60)
    ledger_in_the_past(
        200,
        ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "20",
         "--no-progress", "--param", f"output={tmp_path / name}.sqlite"],
        url, tmp_path,
    )  # fmt: skip
    shown = ledger_command(["status", "numbers", "--json"], url=url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    [run] = [
        r for r in orjson.loads(shown.stdout) if r["input"]["name"] == f"{name}.txt"
    ]
    assert run["state"] == "completed"
    return str(run["run_id"])


def _events_of(url: str, run_id: str) -> int:
    with opened(parse_ledger_url(url)) as ledger:
        return len(list(ledger.repository.event_store.get(UUID(run_id))))


def _rechain(lines: list[dict]) -> list[dict]:
    """Recomputes every chain of an archive file's events, as a forger would."""
    heads: dict[str, str] = {}
    out = []
    for item in lines:
        state = item["state"].encode()
        cut = state.rindex(b',"prev_hash":')
        bare = state[:cut] + b"}"
        event = StoredEvent(
            originator_id=UUID(item["stream"]),
            originator_version=item["version"],
            topic=item["topic"],
            state=bare,
        )
        stored, digest = chained(event, heads.get(item["stream"], GENESIS))
        heads[item["stream"]] = digest
        out.append({**item, "state": stored.state.decode()})
    return out


def test_forged_archive_is_loaded_although_the_ledger_recorded_its_hashes(
    tmp_path: Path, ledger_url: str
) -> None:
    """The live ledger's `Archiving.RunsArchived` event records each archived
    file's sha256 and head hashes, precisely so that the archive need not be
    trusted: a forger who edits an event in the file and recomputes the
    chain and the manifest must not get the forged history loaded."""
    run_id = _old_run(tmp_path, ledger_url)
    folder = tmp_path / "archive"
    done = ledger_command(
        ["archive", "--older-than", "30d", "--to", str(folder)],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "archived 1 runs" in done.stdout

    # Forge: the run's first attempt now "started" from another host.
    path = folder / f"{run_id}.jsonl.gz"
    lines = [
        orjson.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()
    ]
    forged_any = False
    for item in lines:
        if item["topic"].endswith("Run.Started") and not forged_any:
            item["state"] = item["state"].replace('"numbers"', '"forged-job"', 1)
            forged_any = '"forged-job"' in item["state"]
    assert forged_any
    lines = _rechain(lines)
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(i) + b"\n" for i in lines)))
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    [entry] = manifest["runs"]
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    entry["bytes"] = path.stat().st_size
    heads: dict[str, str] = {}
    for item in lines:
        state = item["state"].encode()
        heads[item["stream"]] = state[state.rindex(b'"hash":"') + 8 : -2].decode()
    for stream in entry["streams"]:
        stream["head"] = heads[stream["stream"]]
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))

    loaded = ledger_command(
        ["archive", "load", str(folder)], url=ledger_url, cwd=tmp_path
    )
    assert loaded.returncode == 2
    assert "changed after it was archived" in loaded.stderr
    gone = ledger_command(["verify", run_id], url=ledger_url, cwd=tmp_path)
    assert gone.returncode == 2, gone.stdout


def test_a_run_that_changes_while_it_is_archived_stays_live(
    tmp_path: Path, ledger_url: str
) -> None:
    """An event appended to a run after the archive read it (a rerun, a
    resume) must not be deleted unarchived: the deletion counts the run's
    events inside its own transaction and refuses when they moved on. Here
    the event is appended at the last moment before the deletion, from the
    hook that builds the read-table statements."""
    run_id = _old_run(tmp_path, ledger_url)
    location = parse_ledger_url(ledger_url)
    candidates, _ = read(location, lambda db: _candidates(db, datetime.now(UTC), None))
    [candidate] = [c for c in candidates if c.run_id == run_id]
    before = _events_of(ledger_url, run_id)
    destroyed: list[str] = []

    with opened(location) as ledger:

        def late_append(run: str, streams: list[UUID]) -> list[Any]:
            held: Run = ledger.repository.get(UUID(run))
            held.refuse_appends(1, ["BatchCheckpointed"], "a late writer")
            ledger.save(held)
            mark = "?" if location.sqlite_path is not None else "%s"
            return forget_run(run, [], mark)

        outcome = archive_runs(
            ledger,
            tmp_path / "archive",
            [candidate],
            lambda run: [],
            by="tester",
            reason="race",
            destroy_keys=destroyed.append,
            forget=late_append,
        )

    assert outcome.archived == []
    [(kept, why)] = outcome.kept
    assert kept == run_id
    assert "changed while it was archived" in why
    assert _events_of(ledger_url, run_id) == before + 1
    assert destroyed == []
    shown = ledger_command(["history", run_id], url=ledger_url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert ledger_command(["verify"], url=ledger_url, cwd=tmp_path).returncode == 0
