"""Operator controls: one decision, one command, recorded with who and why."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ledger.cli_support import as_option, location_of, print_json

if TYPE_CHECKING:
    from ledger.operations import ControlResult

__all__ = ["abandon_cmd", "pause_cmd"]


@click.command("abandon")
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--reason",
    required=True,
    help="Why the run's worker will never return (recorded with the run).",
)
@as_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def abandon_cmd(
    ctx: click.Context, run_ref: str, reason: str, as_name: str | None, as_json: bool
) -> None:
    """Mark a run whose worker will never return; a new worker may resume it."""
    from ledger.controls import operator
    from ledger.operations import abandon_run

    result = abandon_run(location_of(ctx), run_ref, by=operator(as_name), reason=reason)
    _show(result, as_json=as_json)


@click.command("pause")
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--reason", required=True, help="Why the run must wait (recorded with the run)."
)
@as_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def pause_cmd(
    ctx: click.Context, run_ref: str, reason: str, as_name: str | None, as_json: bool
) -> None:
    """Pause a run: its worker stops at the next batch boundary and waits
    until `ledger resume RUN`; a run with no worker stays put until then."""
    from ledger.controls import operator
    from ledger.operations import pause_run

    result = pause_run(location_of(ctx), run_ref, by=operator(as_name), reason=reason)
    _show(result, as_json=as_json)


def _show(result: ControlResult, *, as_json: bool) -> None:
    if as_json:
        print_json(result.as_dict())
    else:
        click.echo(result.message)
