"""`ledger run` and `ledger resume`: work, with progress and a summary."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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

from ledger.cli_support import console as make_console
from ledger.cli_support import location_of, print_json
from ledger.config import LedgerLocation
from ledger.errors import InputError, LedgerError
from ledger.job import Job
from ledger.loader import load_job

if TYPE_CHECKING:
    from ledger.runtime import RunSummary

__all__ = ["param_option", "parse_params", "resume", "run"]

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


def _check_input(job: Job, path: Path) -> None:
    """The job's own input check; whatever it raises is bad input."""
    try:
        job.check_input(path)
    except LedgerError:
        raise
    except Exception as error:
        raise InputError(
            str(path),
            f"cannot be read as {job.name}'s input ({type(error).__name__}: {error})",
            "pass the file this job expects",
        ) from error


def _keep_apart(job: Job, params: dict[str, Any], location: LedgerLocation) -> None:
    """Refuses a job output that is, or would clobber, the ledger's files."""
    for output in job.outputs(params):
        text = str(output)
        if not text or text in (".", ":memory:") or "mode=memory" in text:
            raise InputError(
                text or "''",
                "is not a file the output can live in",
                "name an output file: an in-memory output is lost at exit",
            )
        if location.sqlite_path is None:
            continue

        # The ledger is its file plus SQLite's -wal, -shm and -journal
        # files beside it; the same file may also be reached by a link.
        ledger_file = location.sqlite_path.resolve()
        resolved = output.resolve()
        same = resolved.exists() and ledger_file.exists()
        if str(resolved).startswith(str(ledger_file)) or (
            same and os.path.samefile(resolved, ledger_file)
        ):
            raise InputError(
                str(output),
                "is the ledger's own file",
                "write the job's output somewhere else: checkpoints must live "
                "apart from the output they protect",
            )


def _execute(
    location: LedgerLocation,
    job: Job,
    job_ref: str,
    input_path: Path,
    params: dict[str, Any],
    *,
    new_run: bool,
    show_progress: bool,
    as_json: bool,
) -> None:
    # The write side (and its database drivers) loads only when needed, so
    # that read commands start fast.
    from ledger.runtime import describe_input, run_job
    from ledger.store import opened

    # Check everything that can be checked before anything is recorded.
    source = describe_input(input_path)
    _check_input(job, input_path)
    _keep_apart(job, params, location)

    console = Console(stderr=True)
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
                    ledger, job, job_ref, source, params,
                    new_run=new_run, progress=_RichProgress(bar),
                )  # fmt: skip
        else:
            summary = run_job(ledger, job, job_ref, source, params, new_run=new_run)

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
    table.add_row("elapsed", f"{summary.elapsed:.1f} s")
    console.print(table)


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
    _execute(
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
@_output_options
@click.pass_context
def resume(
    ctx: click.Context,
    run_ref: str,
    max_quarantine_ratio: float | None,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Resume a run from its resume point, with its own job, input and params."""
    from ledger.runtime import describe_input
    from projections.access import read
    from projections.views import find_run

    location = location_of(ctx)
    view = read(location, lambda db: find_run(db, run_ref))
    if view.consumer is not None:
        from projections.explain import consume_command

        raise LedgerError(
            f"run {view.run_id} is a Kafka consumer's run; it resumes when its "
            f"member starts again: `{consume_command(view)}`"
        )
    if view.state == "completed":
        raise LedgerError(f"run {view.run_id} is already completed; nothing to resume")
    job = load_job(view.job_ref)
    if job.version != view.job_version:
        raise LedgerError(
            f"run {view.run_id} was made by {view.job} {view.job_version}, but "
            f"{view.job_ref} is now {job.version}; restore that version of the "
            "job to resume, or start a new run with `ledger run`"
        )
    input_path = Path(view.input["path"])
    if not input_path.is_file():
        raise InputError(
            str(input_path),
            f"run {view.run_id[:8]}'s input is gone",
            "put the same file back at that path to resume, or start a new run "
            "on the new path with `ledger run`",
        )
    source = describe_input(input_path)
    if source.sha256 != view.input["sha256"]:
        raise InputError(
            str(input_path),
            "changed since the run started (sha256 differs)",
            "restore the original file, or start a new run with `ledger run`",
        )
    params = dict(view.params)
    if max_quarantine_ratio is not None:
        params["max_quarantine_ratio"] = max_quarantine_ratio
    _execute(
        location, job, view.job_ref, input_path, params,
        new_run=False, show_progress=not no_progress, as_json=as_json,
    )  # fmt: skip
