"""`ledger run` and `ledger resume`: work, with progress and a summary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ledger.cli_support import as_option, location_of, print_json
from ledger.cli_support import console as make_console
from ledger.config import LedgerLocation
from ledger.errors import InputError, LedgerError
from ledger.job import Job
from ledger.loader import load_job
from ledger.resuming import check_input, keep_apart, prepare_resume

if TYPE_CHECKING:
    from ledger.operations import ControlResult
    from ledger.runtime import RunSummary

__all__ = ["execute", "param_option", "parse_params", "prepare_resume", "resume", "run"]

F = TypeVar("F", bound=Callable[..., Any])


class _RichProgress:
    """A bar per step, in the units of the step's source positions."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def step_started(self, step: str, total: int | None, done: int) -> None:
        self.tasks[step] = self.progress.add_task(step, total=total, completed=done)

    def batch_done(self, step: str, position: int) -> None:
        self.progress.update(self.tasks[step], completed=position)

    def step_finished(self, step: str) -> None:
        task = self.tasks.get(step)
        if task is not None:
            total = self.progress.tasks[task].total
            self.progress.update(task, completed=total)

    def paused(self, by: str, reason: str) -> None:
        self.progress.console.print(
            f"paused by {by} ({reason}); waiting for `ledger resume`"
        )


param_option = click.option(
    "--param",
    "-p",
    "param_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="Set a job parameter; repeat for several.",
)


def parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--param NAME=VALUE` pairs as a dict of texts."""
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InputError(f"--param {pair}", "not NAME=VALUE", "write --param k=v")
        params[name.strip()] = value
    return params


def execute(
    location: LedgerLocation,
    job: Job,
    job_ref: str,
    input_path: Path,
    params: dict[str, Any],
    *,
    new_run: bool,
    show_progress: bool,
    as_json: bool,
    run_id: str | None = None,
) -> None:
    """Runs the job (or resumes `run_id`), with progress and a summary."""
    # The write side (and its database drivers) loads only when needed, so
    # that read commands start fast.
    from ledger.runtime import describe_input, run_job
    from ledger.store import opened

    # Check everything that can be checked before anything is recorded.
    source = describe_input(input_path)
    check_input(job, input_path)
    keep_apart(job, params, location)

    console = Console(stderr=True)
    target = UUID(run_id) if run_id else None
    with opened(location) as ledger:
        if show_progress and console.is_terminal and not as_json:
            columns = (
                TextColumn("{task.description:>8}"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=console) as bar:
                summary = run_job(
                    ledger, job, job_ref, source, params, new_run=new_run,
                    progress=_RichProgress(bar), run_id=target,
                )  # fmt: skip
        else:
            summary = run_job(
                ledger, job, job_ref, source, params, new_run=new_run,
                run_id=target,
            )  # fmt: skip

    # Keep the read tables current, so the next `ledger status` answers at
    # once instead of projecting this run's events first.
    from projections.access import catch_up_quietly

    catch_up_quietly(location)
    _show_summary(summary, job, as_json=as_json)


def _show_summary(summary: RunSummary, job: Job, *, as_json: bool) -> None:
    totals = summary.totals
    last_step = summary.steps[-1] if summary.steps else None
    if as_json:
        print_json(
            {
                "run_id": str(summary.run_id),
                "job": summary.job,
                "status": summary.status,
                "already_completed": summary.already_completed,
                "attempt": summary.attempt,
                "resumed_from": summary.resumed_from.as_dict()
                if summary.resumed_from
                else None,
                "totals": totals,
                "quarantined_by_reason": summary.quarantined_by_reason,
                "batches": summary.batches,
                "events_written": summary.events_written,
                "effects": summary.effects,
                "elapsed_seconds": round(summary.elapsed, 3),
            }
        )
        return

    console = make_console()
    if summary.already_completed:
        console.print(
            f"run {summary.run_id} already completed this input version on "
            f"attempt {summary.attempt}; nothing redone (pass --new-run to "
            "run it again)"
        )
    table = Table(title=summary.job, show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("run", str(summary.run_id))
    table.add_row("status", summary.status)
    if summary.resumed_from is not None:
        point = summary.resumed_from
        table.add_row(
            "resumed from",
            f"step {point.step}, batch {point.batch}"
            + (f", after row {point.after.last_record:,}" if point.after else ""),
        )
    if last_step:
        table.add_row("rows loaded", f"{totals.get(f'{last_step}.written', 0):,}")
    quarantined = summary.quarantined_by_reason
    table.add_row("rows quarantined", f"{sum(quarantined.values()):,}")
    for reason, count in sorted(quarantined.items()):
        table.add_row(f"  {reason}", f"{count:,}")
    for name, label in job.counter_labels.items():
        table.add_row(label, f"{totals.get(name, 0):,}")
    table.add_row("batches", f"{summary.batches:,}")
    table.add_row("attempts", f"{summary.attempt}")
    table.add_row("events written", f"{summary.events_written:,}")
    if summary.effects:
        table.add_row("effects (this attempt)", _effects_line(summary.effects))
    table.add_row("elapsed", f"{summary.elapsed:.1f} s")
    console.print(table)


def _effects_line(tally: dict[str, int]) -> str:
    """What the attempt's effects did, in words."""
    words = [f"{tally.get('called', 0):,} called"]
    if tally.get("repeated_after_crash"):
        words.append(f"{tally['repeated_after_crash']:,} of them again after a crash")
    if tally.get("replayed"):
        words.append(f"{tally['replayed']:,} done before, not called")
    if tally.get("uncertain"):
        words.append(
            f"{tally['uncertain']:,} uncertain (see `ledger effects RUN --state "
            "uncertain`)"
        )
    return ", ".join(words)


def _output_options(command: F) -> F:
    """The options every working command shares: progress and JSON."""
    command = click.option(
        "--json", "as_json", is_flag=True, help="Print the summary as JSON."
    )(command)
    return click.option(
        "--no-progress", is_flag=True, help="Do not draw progress bars."
    )(command)


@click.command()
@click.argument("job_ref", metavar="JOB_FILE_OR_MODULE")
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The input file (default: the job's own default input).",
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Records per checkpointed batch (default 5000).",
)
@param_option
@click.option(
    "--new-run",
    is_flag=True,
    help="Start a fresh run of this input version, even if one completed or "
    "an unfinished one exists.",
)
@_output_options
@click.pass_context
def run(
    ctx: click.Context,
    job_ref: str,
    input_path: Path | None,
    batch_size: int | None,
    param_pairs: tuple[str, ...],
    new_run: bool,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Run a job, or resume its unfinished run on the same input."""
    from ledger.runtime import resolve_params

    job = load_job(job_ref)
    overrides = parse_params(param_pairs)
    if batch_size is not None:
        overrides["batch_size"] = str(batch_size)
    params = resolve_params(job, overrides)
    path = input_path or job.default_input()
    if path is None:
        raise InputError(job_ref, "the job has no default input", "pass --input PATH")

    # A job file is recorded by absolute path, so `ledger resume` finds it
    # from any directory.
    if Path(job_ref).is_file():
        job_ref = str(Path(job_ref).resolve())
    execute(
        location_of(ctx), job, job_ref, path, params,
        new_run=new_run, show_progress=not no_progress, as_json=as_json,
    )  # fmt: skip


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--max-quarantine-ratio",
    type=click.FloatRange(0, 1),
    default=None,
    help="Accept a larger share of rejected records per batch.",
)
@click.option(
    "--reason",
    default="",
    help="Why, when this lifts an operator's pause (recorded with the run).",
)
@as_option
@_output_options
@click.pass_context
def resume(
    ctx: click.Context,
    run_ref: str,
    max_quarantine_ratio: float | None,
    reason: str,
    as_name: str | None,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Resume a run from its resume point, with its own job, input and params.

    A paused run's pause is lifted first: a worker waiting on it goes on by
    itself; otherwise this command starts the next attempt.
    """
    from projections.access import read
    from projections.views import find_run

    location = location_of(ctx)
    view = read(location, lambda db: find_run(db, run_ref))
    if view.consumer is not None:
        from projections.explain import consume_command

        if view.paused is not None:
            result = _lift_pause(ctx, view.run_id, reason, as_name)
            then = "" if result.worker else f"; start it: `{consume_command(view)}`"
            _say(result.message + then, result.as_dict(), as_json=as_json)
            return
        raise LedgerError(
            f"run {view.run_id} is a Kafka consumer's run; it resumes when its "
            f"member starts again: `{consume_command(view)}`"
        )
    if view.state == "completed":
        raise LedgerError(f"run {view.run_id} is already completed; nothing to resume")
    job, input_path, params = prepare_resume(view, max_quarantine_ratio)

    # A paused run: lift the pause; a waiting worker goes on by itself.
    if view.paused is not None:
        result = _lift_pause(ctx, view.run_id, reason, as_name)
        if result.worker is not None:
            _say(result.message, result.as_dict(), as_json=as_json)
            return
    execute(
        location, job, view.job_ref, input_path, params, new_run=False,
        show_progress=not no_progress, as_json=as_json, run_id=view.run_id,
    )  # fmt: skip


def _lift_pause(
    ctx: click.Context, run_id: str, reason: str, as_name: str | None
) -> ControlResult:
    from ledger.controls import operator
    from ledger.operations import lift_pause_of

    return lift_pause_of(location_of(ctx), run_id, by=operator(as_name), reason=reason)


def _say(message: str, document: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(document)
    else:
        click.echo(message)
