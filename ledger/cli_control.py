"""Operator controls: one decision, one command, recorded with who and why."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from uuid import UUID

import click

from ledger.cli_support import location_of, print_json
from ledger.config import LedgerLocation

if TYPE_CHECKING:
    from ledger.run import Run

__all__ = ["abandon_cmd"]

# A worker appending at the same moment takes the run's next version
# first; the control is checked again on the run as it then stands.
_CONTROL_TRIES = 5


def _apply_control(
    location: LedgerLocation, run_ref: str, control: Callable[[Run], None]
) -> str:
    """Runs `control(run)` on the stored run and saves it; returns the id."""
    from eventsourcing.persistence import IntegrityError

    from ledger.store import opened
    from projections.access import catch_up_quietly, read
    from projections.views import find_run

    view = read(location, lambda db: find_run(db, run_ref))
    with opened(location) as ledger:
        for _ in range(_CONTROL_TRIES):
            run: Run = ledger.repository.get(UUID(view.run_id))
            control(run)
            try:
                ledger.save(run)
            except IntegrityError:
                continue
            break
        else:
            raise click.ClickException(
                f"run {view.run_id} kept changing under this command; try again"
            )
    catch_up_quietly(location)
    return view.run_id


@click.command("abandon")
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--reason",
    required=True,
    help="Why the run's worker will never return (recorded with the run).",
)
@click.option(
    "--as",
    "as_name",
    default=None,
    metavar="NAME",
    help="Who decides (default: LEDGER_OPERATOR, else user@host).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def abandon_cmd(
    ctx: click.Context, run_ref: str, reason: str, as_name: str | None, as_json: bool
) -> None:
    """Mark a run whose worker will never return; a new worker may resume it."""
    from ledger.controls import abandon, operator

    by = operator(as_name)
    run_id = _apply_control(
        location_of(ctx), run_ref, lambda run: abandon(run, by, reason)
    )
    if as_json:
        print_json({"run_id": run_id, "action": "abandon", "by": by, "reason": reason})
        return
    click.echo(
        f"run {run_id} abandoned by {by}: {reason.strip()}; its worker's later "
        f"appends are refused; `ledger resume {run_id[:8]}` starts a new attempt "
        "from its resume point"
    )
