"""`ledger archive`: ended runs out of the live ledger, checked, and back."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ledger.cli_support import as_option, location_of, print_json

if TYPE_CHECKING:
    from collections.abc import Callable

    from ledger.archive import ArchivedRun
    from ledger.archiving import Candidate
    from ledger.config import LedgerLocation
    from ledger.store import Ledger
    from projections.database import ReadDatabase

__all__ = ["archive"]

_folder = click.Path(file_okay=False, path_type=Path)


@click.group("archive", invoke_without_command=True)
@click.option(
    "--older-than",
    metavar="AGE",
    default=None,
    help="Archive runs that ended before this age (e.g. 120d) or time; "
    "default: each job's retention window.",
)
@click.option("--to", "folder", type=_folder, default=None, help="The archive folder.")
@click.option("--job", default=None, help="Only this job's runs.")
@click.option("--dry-run", is_flag=True, help="Only say what would be archived.")
@click.option("--reason", default=None, help="Why (default: past retention).")
@as_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def archive(
    ctx: click.Context,
    older_than: str | None,
    folder: Path | None,
    job: str | None,
    dry_run: bool,
    reason: str | None,
    as_name: str | None,
    as_json: bool,
) -> None:
    """Move runs that ended before the cut-off into an archive folder.

    Each run is written to a gzip JSON Lines file in the folder, read back
    and checked, listed in its manifest.json, recorded in the ledger, and
    only then removed from the live ledger. Unfinished runs, runs inside
    their job's retention window and runs with records waiting in
    quarantine stay. `ledger archive verify DIR` checks a folder; `ledger
    archive load DIR` brings runs back for review.
    """
    if ctx.invoked_subcommand is not None:
        if older_than or folder or job or dry_run or reason or as_json:
            raise click.UsageError(
                "give the options after the subcommand, e.g. "
                "`ledger archive verify DIR`"
            )
        return
    if folder is None:
        raise click.UsageError("name the archive folder with --to DIR")

    from ledger.controls import operator
    from ledger.times import parse_moment

    now = datetime.now(UTC)
    cutoff = parse_moment(older_than, label="--older-than") if older_than else now
    outcome = _archive(
        location_of(ctx),
        folder,
        cutoff=cutoff,
        now=now,
        job=job,
        dry_run=dry_run,
        by=operator(as_name),
        reason=reason or "past its retention window",
    )
    if as_json:
        print_json(outcome)
        return
    verb = "would archive" if dry_run else "archived"
    for entry in outcome["archived"]:
        click.echo(
            f"{verb} run {entry['run_id']} ({entry['job']}, {entry['state']} "
            f"{entry['ended_at'][:19]}): {entry.get('events', '?')} events"
        )
    for kept in outcome["kept"]:
        click.echo(f"kept run {kept['run_id']}: {kept['why']}")
    click.echo(
        f"{verb} {len(outcome['archived'])} runs to {folder}; "
        f"{len(outcome['kept'])} kept"
    )


def _archive(
    location: LedgerLocation,
    folder: Path,
    *,
    cutoff: datetime,
    now: datetime,
    job: str | None,
    dry_run: bool,
    by: str,
    reason: str,
) -> dict[str, Any]:
    from ledger.archiving import archive_runs, why_kept
    from ledger.sealing import destroy_payload_keys
    from ledger.store import opened
    from projections.access import read
    from projections.tables import forget_run

    candidates, effects = read(location, lambda db: _candidates(db, cutoff, job))
    with opened(location) as ledger:
        retention = _retention(ledger)
        going, kept = [], []
        for candidate in candidates:
            why = why_kept(candidate, cutoff, retention, now)
            if why is None:
                going.append(candidate)
            else:
                kept.append((candidate.run_id, why))
        if dry_run:
            return {
                "archived": [vars(candidate) for candidate in going],
                "kept": [{"run_id": run, "why": why} for run, why in kept],
            }

        mark = "?" if location.sqlite_path is not None else "%s"
        outcome = archive_runs(
            ledger,
            folder,
            going,
            lambda run_id: effects.get(run_id, []),
            by=by,
            reason=reason,
            destroy_keys=lambda run_id: destroy_payload_keys(ledger, run_id),
            forget=lambda run_id, streams: forget_run(
                run_id, [str(stream) for stream in streams[1:]], mark
            ),
        )
    outcome.kept[:0] = kept
    return outcome.as_dict()


def _retention(ledger: Ledger) -> Callable[[str], int]:
    """Each job's retention window in days, as the ledger's policy says."""
    from ledger.policy import POLICY_ID, RETENTION_DAYS, LedgerPolicy
    from ledger.store import AggregateNotFoundError

    try:
        policy: LedgerPolicy = ledger.repository.get(POLICY_ID)
    except AggregateNotFoundError:
        return lambda job: RETENTION_DAYS
    return policy.retention_of


async def _candidates(
    db: ReadDatabase, cutoff: datetime, job: str | None
) -> tuple[list[Candidate], dict[str, list[str]]]:
    """Runs that started before the cut-off, and the effects only each made."""
    from ledger.archiving import Candidate

    rows = await db.fetch(
        "SELECT r.run_id, r.job, r.state, r.ended_at, "
        "(SELECT COUNT(*) FROM proj_quarantine q WHERE q.run_id = r.run_id "
        "AND q.state = 'pending') AS pending "
        "FROM proj_runs r WHERE r.started_at < $1 AND ($2 = '' OR r.job = $2) "
        "ORDER BY r.started_at",
        cutoff.isoformat(),
        job or "",
    )
    candidates = [
        Candidate(
            run_id=row["run_id"],
            job=row["job"],
            state=row["state"],
            ended_at=row["ended_at"],
            pending_quarantine=int(row["pending"]),
        )
        for row in rows
    ]
    effects: dict[str, list[str]] = {}
    for row in await db.fetch(
        "SELECT effect_key, run_id FROM proj_effects WHERE run_id = last_run_id "
        "ORDER BY effect_key"
    ):
        effects.setdefault(row["run_id"], []).append(row["effect_key"])
    return candidates, effects


@archive.command("verify")
@click.argument("folder", type=_folder)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def verify_archive_cmd(folder: Path, as_json: bool) -> None:
    """Re-check every file of an archive folder against its manifest: its
    sha256, its events, and each stream's hash chain and head. Exits 1 at
    the first file that does not match."""
    from ledger.archive import ArchiveDamaged, check_archive

    entries = _entries(folder)
    problems = []
    for entry in entries:
        try:
            check_archive(folder, entry)
        except ArchiveDamaged as damaged:
            problems.append(str(damaged))
    if as_json:
        print_json({"runs": len(entries), "intact": not problems, "problems": problems})
    else:
        for problem in problems:
            click.echo(f"DAMAGED: {problem}")
        events = sum(entry.events for entry in entries)
        state = "every file matches its manifest" if not problems else "damaged"
        click.echo(f"checked {len(entries)} runs, {events:,} events: {state}")
    if problems:
        sys.exit(1)


@archive.command("load")
@click.argument("folder", type=_folder)
@click.option("--run", "run_refs", multiple=True, metavar="RUN", help="Only these.")
@click.option("--reason", default="review", show_default=True, help="Why.")
@as_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def load_archive_cmd(
    ctx: click.Context,
    folder: Path,
    run_refs: tuple[str, ...],
    reason: str,
    as_name: str | None,
    as_json: bool,
) -> None:
    """Bring archived runs back into the live ledger for review, checked
    first and stored byte for byte, so their chains still verify."""
    from ledger.archiving import load_runs
    from ledger.controls import operator
    from ledger.store import opened
    from projections.access import catch_up_quietly

    location = location_of(ctx)
    with opened(location) as ledger:
        loaded, skipped = load_runs(
            ledger,
            folder,
            list(run_refs) or None,
            by=operator(as_name),
            reason=reason,
        )
    catch_up_quietly(location)
    if as_json:
        print_json(
            {
                "loaded": [entry.as_dict() for entry in loaded],
                "skipped": [{"run_id": run, "why": why} for run, why in skipped],
            }
        )
        return
    for entry in loaded:
        click.echo(f"loaded run {entry.run_id} ({entry.job}): {entry.events} events")
    for run_id, why in skipped:
        click.echo(f"skipped run {run_id}: {why}")


@archive.command("list")
@click.argument("folder", type=_folder)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_archive_cmd(folder: Path, as_json: bool) -> None:
    """The runs an archive folder holds, from its manifest."""
    entries = _entries(folder)
    if as_json:
        print_json([entry.as_dict() for entry in entries])
        return
    for entry in entries:
        click.echo(
            f"{entry.run_id}  {entry.job}  {entry.state}  ended {entry.ended_at[:19]}  "
            f"{entry.events} events  {entry.file}"
        )


def _entries(folder: Path) -> list[ArchivedRun]:
    from ledger.archive import read_manifest
    from ledger.archiving import ArchiveRefused

    entries = read_manifest(folder)
    if not entries:
        raise ArchiveRefused(
            f"{folder} holds no archive manifest; give the folder "
            "`ledger archive --to` wrote"
        )
    return entries
