"""Moving ended runs out of the live ledger into an archive folder, and back.

A run leaves the live ledger only when all of this holds: it ended
(completed or abandoned) before both the cut-off asked for and its job's
retention window, no quarantined record of it waits for a decision, and
its hash chain holds. Its events, and those of the effects only it made,
are written to the folder, read back and checked against the store's
bytes, listed in the manifest, and recorded in the ledger as an
`Archiving.RunsArchived` event (who, when, why, each file's sha256 and
head hashes). Only then are they deleted, with the run's read-table rows,
in one transaction; quarantined payloads' keys are destroyed with them.

Loading a run back stores its events again byte for byte (new notification
ids, the same chains), so every read command and `ledger verify` work on it
as before it left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from ledger.archive import (
    ArchivedRun,
    chain_of,
    check_archive,
    read_manifest,
    sha256_of,
    streams_of,
    write_archive,
    write_manifest,
)
from ledger.errors import LedgerError
from ledger.store import Ledger, StreamRow, StreamsChanged

__all__ = [
    "ArchiveOutcome",
    "ArchiveRefused",
    "Archiving",
    "Candidate",
    "archive_runs",
    "load_runs",
    "why_kept",
]

# The states a run never leaves: nothing more will be recorded on it.
ENDED = ("completed", "abandoned")


class ArchiveRefused(LedgerError):
    """An archive or load that cannot be done as asked."""


class Archiving(Aggregate):
    """One archive or load operation, kept in the live ledger for audit."""

    class RunsArchived(Aggregate.Created):
        folder: str
        runs: list[dict[str, Any]]
        by: str
        reason: str

    class RunsLoaded(Aggregate.Created):
        folder: str
        runs: list[dict[str, Any]]
        by: str
        reason: str

    def __init__(self, folder: str, runs: list[dict[str, Any]], by: str, reason: str):
        self.folder = folder
        self.runs = runs
        self.by = by
        self.reason = reason


@dataclass(frozen=True)
class Candidate:
    """A run the read side lists, with what decides whether it may go."""

    run_id: str
    job: str
    state: str
    ended_at: str | None
    pending_quarantine: int


@dataclass
class ArchiveOutcome:
    archived: list[ArchivedRun] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "archived": [entry.as_dict() for entry in self.archived],
            "kept": [{"run_id": run, "why": why} for run, why in self.kept],
        }


def why_kept(
    candidate: Candidate,
    cutoff: datetime,
    retention_days: Callable[[str], int],
    now: datetime,
) -> str | None:
    """Why the run stays in the live ledger, or None if it may go."""
    if candidate.state not in ENDED or candidate.ended_at is None:
        return (
            f"it is {candidate.state}, not ended: an unfinished run is never archived"
        )
    ended = datetime.fromisoformat(candidate.ended_at)
    if ended >= cutoff:
        return "it ended after the cut-off"
    window = retention_days(candidate.job)
    if ended >= now - timedelta(days=window):
        return f"it is inside job {candidate.job}'s retention window of {window} days"
    if candidate.pending_quarantine:
        return (
            f"{candidate.pending_quarantine} of its quarantined records wait for a "
            "decision (promote or discard them first)"
        )
    return None


def archive_runs(
    ledger: Ledger,
    folder: Path,
    candidates: Sequence[Candidate],
    effects_of: Callable[[str], list[str]],
    *,
    by: str,
    reason: str,
    destroy_keys: Callable[[str], object],
    forget: Callable[[str, list[UUID]], Sequence[tuple[str, tuple[Any, ...]]]],
) -> ArchiveOutcome:
    """Archives each candidate (already chosen by `why_kept`) in turn."""
    outcome = ArchiveOutcome()
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {entry.run_id: entry for entry in read_manifest(folder)}
    recorder: Any = ledger.recorder

    for candidate in candidates:
        streams = [UUID(candidate.run_id), *map(UUID, effects_of(candidate.run_id))]
        rows = recorder.select_stream_rows(streams)

        # A run whose chain does not hold is evidence: it stays where
        # `ledger verify` can show it.
        check = chain_of(rows)
        if check.breaks:
            found = check.breaks[0]
            outcome.kept.append(
                (
                    candidate.run_id,
                    f"its hash chain is broken at event {found.version} "
                    f"of {found.stream}: see `ledger verify {candidate.run_id}`",
                )
            )
            continue

        # Written, then read back and compared with the store's bytes.
        path = write_archive(folder, candidate.run_id, rows)
        entry = ArchivedRun(
            run_id=candidate.run_id,
            job=candidate.job,
            state=candidate.state,
            ended_at=candidate.ended_at or "",
            file=path.name,
            sha256=sha256_of(path),
            bytes=path.stat().st_size,
            events=len(rows),
            first_notification_id=min(row.notification_id for row in rows),
            last_notification_id=max(row.notification_id for row in rows),
            streams=streams_of(check),
            archived_at=datetime.now(UTC).isoformat(),
            archived_by=by,
        )
        if check_archive(folder, entry) != rows:
            raise ArchiveRefused(f"{path} does not read back as the stored events")
        manifest[candidate.run_id] = entry
        write_manifest(folder, list(manifest.values()))

        # On record before anything is removed: an archive is a decision.
        ledger.save(
            Archiving._create(
                Archiving.RunsArchived,
                id=uuid4(),
                folder=str(folder.resolve()),
                runs=[_summary(entry)],
                by=by,
                reason=reason,
            )
        )
        try:
            recorder.delete_streams(
                streams, len(rows), forget(candidate.run_id, streams)
            )
        except StreamsChanged as changed:
            # A rerun or a resume got there first: the run is no longer what
            # was archived, so it stays live, whole. Its file stays in the
            # folder; the next archive writes it again if it ends again.
            outcome.kept.append(
                (candidate.run_id, f"it changed while it was archived ({changed})")
            )
            continue

        # Only now is the payload gone for good: a run that stayed live keeps
        # its keys. A crash before this leaves keys that `quarantine
        # sweep-keys` finds orphaned.
        destroy_keys(candidate.run_id)
        outcome.archived.append(entry)
    return outcome


def load_runs(
    ledger: Ledger,
    folder: Path,
    run_ids: Sequence[str] | None,
    *,
    by: str,
    reason: str,
) -> tuple[list[ArchivedRun], list[tuple[str, str]]]:
    """Stores the archived runs' events again; returns those loaded and
    those skipped with why."""
    entries = read_manifest(folder)
    if not entries:
        raise ArchiveRefused(
            f"{folder} holds no archive manifest; give the folder "
            "`ledger archive --to` wrote"
        )
    chosen = [e for e in entries if run_ids is None or _matches(e.run_id, run_ids)]
    if run_ids is not None and not chosen:
        raise ArchiveRefused(
            f"no run of {folder} matches {', '.join(run_ids)}; "
            "`ledger archive list DIR` lists them"
        )

    loaded, skipped = [], []
    recorder: Any = ledger.recorder
    recorded = _recorded_archives(ledger)
    for entry in chosen:
        rows = check_archive(folder, entry)

        # The folder vouches for itself; the ledger's own record of the
        # archive is what a forger cannot rewrite along with it.
        summary = _summary(entry)
        known = recorded.get(entry.run_id, [])
        if known and not any(_same_content(summary, item) for item in known):
            raise ArchiveRefused(
                f"{entry.file} is not the file this ledger archived for run "
                f"{entry.run_id}: its sha256 or head hashes differ from the "
                "`Archiving.RunsArchived` event recorded then; it was changed "
                "after it was archived, so it is not loaded"
            )
        if recorder.select_events(UUID(entry.run_id), limit=1):
            skipped.append((entry.run_id, "it is in the live ledger already"))
            continue
        live = {row.stream for row in recorder.select_stream_rows(_streams(rows))}
        recorder.restore_events(
            [_stored(row) for row in rows if row.stream not in live]
        )
        loaded.append(entry)
    if loaded:
        ledger.save(
            Archiving._create(
                Archiving.RunsLoaded,
                id=uuid4(),
                folder=str(folder.resolve()),
                runs=[_summary(entry) for entry in loaded],
                by=by,
                reason=reason,
            )
        )
    return loaded, skipped


def _recorded_archives(ledger: Ledger) -> dict[str, list[dict[str, Any]]]:
    """What this ledger recorded of each run it archived, by run id."""
    topic = get_topic(Archiving.RunsArchived)
    recorder: Any = ledger.recorder
    found: dict[str, list[dict[str, Any]]] = {}
    start = 1
    while True:
        page = recorder.select_notifications(start, _PAGE, topics=[topic])
        for item in page:
            for run in orjson.loads(bytes(item.state))["runs"]:
                found.setdefault(run["run_id"], []).append(run)
        if len(page) < _PAGE:
            return found
        start = page[-1].id + 1


def _same_content(file: dict[str, Any], recorded: dict[str, Any]) -> bool:
    keys = ("sha256", "events", "heads")
    return all(file[key] == recorded[key] for key in keys)


# Archive records read per query.
_PAGE = 1_000


def _matches(run_id: str, refs: Sequence[str]) -> bool:
    bare = run_id.replace("-", "")
    return any(bare.startswith(ref.strip().lower().replace("-", "")) for ref in refs)


def _streams(rows: Sequence[StreamRow]) -> list[UUID]:
    return list(dict.fromkeys(row.stream for row in rows))


def _stored(row: StreamRow) -> StoredEvent:
    return StoredEvent(
        originator_id=row.stream,
        originator_version=row.version,
        topic=row.topic,
        state=row.state,
    )


def _summary(entry: ArchivedRun) -> dict[str, Any]:
    return {
        "run_id": entry.run_id,
        "job": entry.job,
        "file": entry.file,
        "sha256": entry.sha256,
        "events": entry.events,
        "heads": {stream["stream"]: stream["head"] for stream in entry.streams},
    }
