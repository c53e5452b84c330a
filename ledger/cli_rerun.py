"""`ledger rerun`: redo a run's work from a named point, keeping the rest.

The command shows its plan (what is kept, what is redone) before it acts;
`--dry-run` shows only the plan. Before anything is recorded, the steps
whose work is kept are asked whether their output still holds it: a rerun
that would build on lost output is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ledger.cli_run import execute, prepare_resume
from ledger.cli_support import as_option, location_of, print_json
from ledger.controls import ControlRefused
from ledger.errors import LedgerError, OutputLost
from ledger.job import InputVersion, Job, RunContext
from projections.explain import describe_resume

if TYPE_CHECKING:
    from ledger.rerun import RerunPlan
    from projections.views import RunView

__all__ = ["rerun"]


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--from",
    "point",
    default=None,
    metavar="POINT",
    help="Where the redo starts: step:NAME, batch:N or step:NAME/batch:N.",
)
@click.option(
    "--failed-only",
    is_flag=True,
    help="Replay only the failed batch (and the work never done after it) "
    "and promote the run's quarantined records; nothing that completed.",
)
@click.option("--reason", default="", help="Why the work is redone (recorded).")
@as_option
@click.option(
    "--max-quarantine-ratio",
    type=click.FloatRange(0, 1),
    default=None,
    help="Accept a larger share of rejected records per batch.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; record nothing.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def rerun(
    ctx: click.Context,
    run_ref: str,
    point: str | None,
    failed_only: bool,
    reason: str,
    as_name: str | None,
    max_quarantine_ratio: float | None,
    dry_run: bool,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Rerun a run from a named point: the work before it is kept, the rest
    is redone by a new attempt."""
    from ledger.controls import operator
    from ledger.operations import plan_rerun_of, rerun_run
    from projections.access import read
    from projections.views import find_run

    location = location_of(ctx)
    if (point is None) == (not failed_only):
        raise LedgerError(
            "name what to rerun: --from POINT (step:NAME, batch:N or "
            "step:NAME/batch:N), or --failed-only; not both"
        )
    if not dry_run and not reason.strip():
        raise ControlRefused(
            "a rerun needs a reason: pass --reason TEXT saying why the work is redone"
        )
    view = read(location, lambda db: find_run(db, run_ref))
    if failed_only:
        replay_failed(
            ctx, view, reason, as_name, max_quarantine_ratio,
            dry_run=dry_run, no_progress=no_progress, as_json=as_json,
        )  # fmt: skip
        return
    assert point is not None
    plan = plan_rerun_of(location, view.run_id, point)
    job, input_path, params = prepare_resume(view, max_quarantine_ratio)
    _check_kept_output(
        job, view.run_id, view.input, params, plan, completed=view.state == "completed"
    )

    # The plan first: what is kept and what is redone.
    if as_json and dry_run:
        print_json({"plan": plan.as_dict(), "dry_run": True})
        return
    if not as_json:
        for line in plan.lines():
            click.echo(line)
    if dry_run:
        return
    if not reason.strip():
        raise ControlRefused(
            "a rerun needs a reason: pass --reason TEXT saying why the work is redone"
        )

    result = rerun_run(
        location,
        view.run_id,
        by=operator(as_name),
        reason=reason,
        point=point,
        expected=plan,
    )
    if not as_json:
        click.echo(result.message.split("; `ledger resume")[0])
    execute(
        location, job, view.job_ref, input_path, params, new_run=False,
        show_progress=not no_progress, as_json=as_json, run_id=view.run_id,
    )  # fmt: skip


def _check_kept_output(
    job: Job,
    run_id: str,
    source: dict[str, Any],
    params: dict[str, Any],
    plan: RerunPlan,
    *,
    completed: bool,
) -> None:
    """Refuses a rerun whose kept work is no longer in the output."""
    from uuid import UUID

    version = InputVersion(
        path=source["path"],
        name=source["name"],
        size=source["size"],
        sha256=source["sha256"],
    )
    context = RunContext(run_id=UUID(run_id), input=version, params=params)
    try:
        steps = {step.name: step for step in job.open(context)}
    except LedgerError:
        raise
    except Exception as error:
        raise LedgerError(
            f"{job.name} could not open its output to check the kept work "
            f"({type(error).__name__}: {error}); check the files it names"
        ) from error
    try:
        for item in plan.steps:
            verify = getattr(steps.get(item.step), "verify", None)
            if verify is None or not item.kept_written:
                continue
            try:
                verify(item.kept_written)
            except OutputLost as lost:
                raise ControlRefused(
                    f"a rerun from {plan.point} keeps step {item.step}'s work, but "
                    f"its output holds {lost.found:,} of the {lost.expected:,} "
                    "records written (a completed run's staged work is gone by "
                    "design); rerun from an earlier point (the first step keeps "
                    f"nothing: --from step:{plan.steps[0].step})"
                ) from None
    finally:
        # Closed as the run stands, so that a job which cleans up after a
        # completed run (staging files) does so again after this look.
        job.close(context, completed=completed)


def replay_failed(
    ctx: click.Context,
    view: RunView,
    reason: str,
    as_name: str | None,
    max_quarantine_ratio: float | None,
    *,
    dry_run: bool,
    no_progress: bool,
    as_json: bool,
) -> None:
    """`rerun --failed-only`: the failed batch and what was never done after
    it (the run's resume point), then every pending quarantined record
    through the job's own code; nothing checkpointed is done again."""
    from ledger.cli_promote import open_messages, show_bulk_promotion
    from ledger.controls import operator
    from ledger.promotions import promote_records
    from ledger.quarantine import FAILED

    location = location_of(ctx)
    short = view.run_id[:8]
    if view.worker_alive:
        raise ControlRefused(
            f"run {view.run_id} is held by a live worker ({view.worker_evidence}); "
            "its failed work is what it is doing: wait for it to end"
        )
    unfinished = view.state not in ("completed", "stopped")
    selected = promote_records(
        location, by="", reason="", dry_run=True, run_ref=view.run_id
    )

    # The plan first.
    if view.consumer is not None:
        replay = (
            "the consumer's partitions go on from its positions when its member "
            "starts again"
        )
    elif unfinished:
        replay = f"from {describe_resume(view.resume_point)}"
    else:
        replay = "nothing (every step is done)"
    reasons = ", ".join(f"{n:,} {r}" for r, n in sorted(selected.by_reason.items()))
    lines = [
        f"rerun of run {view.run_id}: failed work only",
        f"replay: {replay}",
        f"promote: {selected.matched:,} quarantined records"
        + (f" ({reasons})" if reasons else ""),
        "keep: every checkpointed batch",
    ]
    if as_json and dry_run:
        print_json({"plan": lines, "dry_run": True})
        return
    if not as_json:
        for line in lines:
            click.echo(line)
    if dry_run:
        return
    if not reason.strip():
        raise ControlRefused(
            "a rerun needs a reason: pass --reason TEXT saying why the work is redone"
        )
    if not selected.matched and not (unfinished and view.consumer is None):
        raise ControlRefused(
            f"run {view.run_id} has no failed work: nothing to replay and "
            "nothing pending in quarantine"
        )

    # The failed batch and after, as `ledger resume` would.
    if unfinished and view.consumer is None:
        job, input_path, params = prepare_resume(view, max_quarantine_ratio)
        execute(
            location, job, view.job_ref, input_path, params, new_run=False,
            show_progress=not no_progress, as_json=as_json, run_id=view.run_id,
        )  # fmt: skip

    # Then the quarantined records, exactly those counted above.
    if not selected.matched:
        return
    done = promote_records(
        location, by=operator(as_name), reason=reason, run_ref=view.run_id,
        quarantine_ids=selected.quarantine_ids, open_messages=open_messages,
    )  # fmt: skip
    if any(item["outcome"] == FAILED for item in done.results):
        click.echo(
            f"some promotions failed; they stay pending: `ledger quarantine list "
            f"--run {short}`",
            err=True,
        )
    show_bulk_promotion(done, as_json=as_json)
