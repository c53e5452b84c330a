"""Read commands: status, history, explain, quarantine, and the projector."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click
from rich.table import Table

from ledger.cli_support import console, location_of, print_json, read_shown
from ledger.config import LedgerLocation
from ledger.errors import LedgerNotCreated
from projections.access import open_read_database
from projections.database import ReadDatabase
from projections.documents import (
    explain_document,
    history_document,
    quarantine_document,
    read_quarantine,
    read_run_and_attempts,
    status_document,
)
from projections.explain import (
    describe_checkpoint,
    describe_partitions,
    describe_resume,
    explain,
)
from projections.explain import short_id as _short
from projections.runner import catch_up, follow_loop, rebuild
from projections.views import (
    list_runs,
)

__all__ = ["explain_cmd", "history", "project", "quarantine", "status"]

_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON with stable field names."
)


@click.command()
@click.argument("job", required=False)
@click.option(
    "--as-of",
    "as_of",
    default=None,
    metavar="TIME",
    help="With JOB: its runs as they stood then (ISO 8601, UTC unless it "
    "names a zone, or an age such as 3d), rebuilt from the log.",
)
@_json_option
@click.pass_context
def status(
    ctx: click.Context, job: str | None, as_of: str | None, as_json: bool
) -> None:
    """Every job's last good checkpoint and state (or one job's runs)."""
    if as_of is not None:
        _status_as_of(ctx, job, as_of, as_json)
        return
    runs = read_shown(location_of(ctx), lambda db: list_runs(db, job))
    if as_json:
        print_json(status_document(runs))
        return
    if not runs:
        click.echo(f"no runs of {job} in this ledger" if job else "no runs yet")
        return
    table = Table(title="ledger status")
    for column in ("job", "run", "state", "attempts", "last good checkpoint",
                   "resume point", "quarantined", "updated"):  # fmt: skip
        table.add_column(column)
    for run in runs:
        checkpoint = describe_checkpoint(run.last_checkpoint)
        resume = describe_resume(run.resume_point)
        if run.consumer is not None:
            # A consumer resumes per partition; its positions say where.
            batch = run.last_checkpoint["batch"] if run.last_checkpoint else None
            checkpoint = "none yet" if batch is None else f"batch {batch}"
            resume = describe_partitions(run.consumer)
        table.add_row(
            run.job,
            _short(run.run_id),
            run.state,
            str(run.attempts),
            checkpoint,
            resume,
            f"{run.quarantined:,}",
            run.updated_at[:19].replace("T", " "),
        )
    console().print(table)


def _status_as_of(
    ctx: click.Context, job: str | None, as_of: str, as_json: bool
) -> None:
    from ledger.as_of import parse_as_of, status_as_of

    if job is None:
        raise click.UsageError("--as-of needs a JOB: `ledger status JOB --as-of TIME`")
    moment = parse_as_of(as_of)
    runs = status_as_of(location_of(ctx), job, moment)
    if as_json:
        print_json([run.as_dict() for run in runs])
        return
    when = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    if not runs:
        click.echo(f"no run of {job} had started by {when}")
        return
    table = Table(title=f"ledger status {job} as of {when}")
    for column in ("run", "state then", "attempts", "last good checkpoint",
                   "resume point", "quarantined", "last event"):  # fmt: skip
        table.add_column(column)
    for run in runs:
        resume = describe_resume(run.resume_point)
        if run.partitions:
            resume = ", ".join(
                f"{p} at {n:,}" for p, n in sorted(run.partitions.items())
            )
        table.add_row(
            _short(run.run_id),
            run.state,
            str(run.attempts),
            describe_checkpoint(run.last_checkpoint),
            resume,
            f"{run.quarantined:,}",
            run.last_event_at[:19].replace("T", " "),
        )
    console().print(table)


@click.command()
@click.argument("run_ref", metavar="RUN")
@_json_option
@click.pass_context
def history(ctx: click.Context, run_ref: str, as_json: bool) -> None:
    """The attempt history of one run."""

    run, attempts = read_shown(
        location_of(ctx), lambda db: read_run_and_attempts(db, run_ref)
    )
    if as_json:
        print_json(history_document(run, attempts))
        return
    if run.consumer is not None:
        title = (
            f"{run.job} run {run.run_id}  group {run.consumer['group']} member "
            f"{run.consumer['member']} topics {', '.join(run.consumer['topics'])}"
        )
    else:
        title = (
            f"{run.job} run {run.run_id}  input {run.input['name']} "
            f"sha256 {str(run.input['sha256'])[:12]}"
        )
    table = Table(title=title)
    for column in ("attempt", "started", "ended", "outcome", "resumed from",
                   "batches", "failed at", "error"):  # fmt: skip
        table.add_column(column)
    for attempt in attempts:
        failed_at = ""
        if attempt.failed_step:
            failed_at = f"{attempt.failed_step}"
            if attempt.failed_batch is not None:
                failed_at += f" batch {attempt.failed_batch}"
        error = ""
        if attempt.error_class:
            error = f"{attempt.error_class}: {attempt.error_message or ''}"[:80]
        outcome = attempt.outcome
        if attempt.superseded:
            outcome += f", {len(attempt.superseded)} superseded"
        table.add_row(
            str(attempt.attempt),
            _time(attempt.started_at),
            _time(attempt.ended_at),
            outcome,
            _resumed(attempt.resume_from, consumer=run.consumer is not None),
            str(attempt.batches),
            failed_at,
            error,
        )
    console().print(table)

    # Every human decision, with who and why.
    for action in run.actions:
        noun = "effect" if action["action"].startswith("effect") else "record"
        target = f" of {noun} {action['target'][:8]}" if action.get("target") else ""
        click.echo(
            f"{_time(action['at'])}: {action['action']}{target} by {action['by']}: "
            f"{action['reason']}"
        )

    # A refused checkpoint is part of the story: say which, and why.
    for attempt in attempts:
        for item in attempt.superseded:
            click.echo(
                f"attempt {attempt.attempt}, batch {item['batch']}: checkpoint of "
                f"{item['partition']} at {item['tried']:,} superseded; another "
                f"consumer had recorded {item['recorded']:,}"
            )


def _time(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else ""


def _resumed(resume: dict[str, Any] | None, *, consumer: bool = False) -> str:
    if consumer:
        # A consumer resumes each partition at the group's ledger position,
        # whatever this run has done so far.
        after = (resume or {}).get("after_record") or 0
        done = f" (after message {after:,} of this run)" if after else ""
        return f"the group's positions{done}"
    if not resume or (not resume.get("after_record") and not resume.get("batch")):
        return "start" if not resume else f"{resume['step']} from the start"
    if not resume.get("after_record"):
        return f"{resume['step']} batch {resume['batch']}"
    after = resume["after_record"]
    return f"{resume['step']} batch {resume['batch']} (after row {after:,})"


@click.command("explain")
@click.argument("run_ref", metavar="RUN")
@_json_option
@click.pass_context
def explain_cmd(ctx: click.Context, run_ref: str, as_json: bool) -> None:
    """One sentence: what failed, where it resumes, and the command to run."""

    run, attempts = read_shown(
        location_of(ctx), lambda db: read_run_and_attempts(db, run_ref)
    )
    if as_json:
        print_json(explain_document(run, attempts))
        return
    click.echo(explain(run, attempts))


@click.group()
def quarantine() -> None:
    """Records waiting in quarantine."""


@quarantine.command("list")
@click.argument("job", required=False)
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Show at most this many records.",
)
@click.option(
    "--run",
    "run_ref",
    default=None,
    metavar="RUN",
    help="Only this run's records (an id or a unique prefix).",
)
@click.option(
    "--state",
    default="pending",
    show_default=True,
    type=click.Choice(["pending", "discarded", "promoted", "all"]),
    help="Only records in this state: waiting for a decision, or decided.",
)
@_json_option
@click.pass_context
def quarantine_list(
    ctx: click.Context,
    job: str | None,
    limit: int,
    run_ref: str | None,
    state: str,
    as_json: bool,
) -> None:
    """Quarantined records, oldest first, with their reasons and states."""
    only = None if state == "all" else state

    total, records = read_shown(
        location_of(ctx), lambda db: read_quarantine(db, job, limit, run_ref, only)
    )
    if as_json:
        print_json(quarantine_document(total, records))
        return
    if not total:
        click.echo("nothing in quarantine" if only is None else f"no {only} records")
        return
    shown = f"{total:,} {only or ''} records (showing {len(records)})"
    table = Table(title=f"quarantine: {' '.join(shown.split())}")
    for column in ("id", "job", "run", "step", "batch", "record", "reason",
                   "detail", "attempt", "state"):  # fmt: skip
        table.add_column(column)
    for record in records:
        table.add_row(
            record.quarantine_id[:8], record.job, _short(record.run_id),
            record.step, str(record.batch), f"{record.record:,}", record.reason,
            record.detail[:60], str(record.attempt), record.state,
        )  # fmt: skip
    console().print(table)


async def _open_when_ready(location: LedgerLocation, *, wait: bool) -> ReadDatabase:
    """Opens the read side; a follower started before the first job waits."""
    announced = False
    while True:
        try:
            return await open_read_database(location)
        except LedgerNotCreated:
            if not wait:
                raise
            if not announced:
                click.echo(f"waiting for a ledger at {location.display_url}")
                announced = True
            await asyncio.sleep(0.5)


@click.command()
@click.option("--follow", is_flag=True, help="Keep following the log until stopped.")
@click.option(
    "--rebuild",
    "from_scratch",
    is_flag=True,
    help="Drop the read tables and project the whole log again.",
)
@click.pass_context
def project(ctx: click.Context, follow: bool, from_scratch: bool) -> None:
    """Bring the read tables up to date with the event log."""
    location = location_of(ctx)

    async def work() -> None:
        db = await _open_when_ready(location, wait=follow)
        try:
            started = time.monotonic()
            applied = await (rebuild(db) if from_scratch else catch_up(db))
            click.echo(
                f"projected {applied:,} events in {time.monotonic() - started:.1f} s"
            )
            if follow:
                click.echo("following the log; stop with Ctrl-C")
                await follow_loop(db)
        finally:
            await db.close()

    try:
        asyncio.run(work())
    except KeyboardInterrupt:
        click.echo("stopped")
