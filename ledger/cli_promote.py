"""`ledger quarantine promote`: put quarantined records back into processing.

A promoted record goes through its job's own code again, as a new attempt
of that one record, and the outcome is recorded with who and why. The
line printed says it in words: written, rejected again (and quarantined
under a new id that names the old one), or failed (still pending).

Exit codes: 0 when every promotion was recorded and none failed; 1 when
the job's code failed on a record (recorded; it stays pending); 2 for bad
input and refusals, which record nothing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ledger.cli_quarantine import (
    bulk_filters,
    bulk_query,
    check_bulk_form,
    confirm_selection,
)
from ledger.cli_support import as_option, bootstrap_option, location_of, print_json

if TYPE_CHECKING:
    from ledger.effects import EffectsFor
    from ledger.promotion import Promoter
    from ledger.promotions import BulkPromotion
    from projections.views import RunView

__all__ = ["open_messages", "promote_cmd"]


def open_messages(
    view: RunView, bootstrap_servers: str | None, effects_for: EffectsFor
) -> Promoter:
    """The Kafka adapter, loaded only when a consumer's message is promoted."""
    from consumers.promotion import open_message_promotion

    return open_message_promotion(view, bootstrap_servers, effects_for)


@click.command("promote")
@click.argument("quarantine_ref", metavar="[ID]", required=False)
@bulk_filters("Promote")
@click.option(
    "--reason",
    default="",
    help="Why the records are promoted (recorded; default 'promoted').",
)
@as_option
@bootstrap_option
@click.option("--yes", is_flag=True, help="With --all: do not ask to confirm.")
@click.option(
    "--dry-run", is_flag=True, help="With --all: only count what would be promoted."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def promote_cmd(
    ctx: click.Context,
    quarantine_ref: str | None,
    every: bool,
    job: str | None,
    run_ref: str | None,
    quarantine_reason: str | None,
    since: str | None,
    until: str | None,
    reason: str,
    as_name: str | None,
    bootstrap_servers: str | None,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Promote a quarantined record (ID), or every match of filters (--all).

    The record goes through its job's own code again: from the step that
    rejected it through every later step (a consumer's message: fetched
    again from its topic). Refused while a live worker holds the run.
    """
    from ledger.controls import operator
    from ledger.promotions import promote_record, promote_records
    from ledger.quarantine import FAILED
    from ledger.redaction import shown

    query = bulk_query(job, run_ref, quarantine_reason, since, until)
    check_bulk_form("promote", quarantine_ref, every, query, yes=yes, dry_run=dry_run)
    by = operator(as_name)
    location = location_of(ctx)

    # One record.
    if quarantine_ref is not None:
        result = promote_record(
            location, quarantine_ref, by=by, reason=reason,
            bootstrap_servers=bootstrap_servers, open_messages=open_messages,
        )  # fmt: skip
        if as_json:
            print_json(result.as_dict())
        else:
            click.echo(shown(result.message))
        if result.outcome == FAILED:
            sys.exit(1)
        return

    # Many: count them first, then ask (or not), then act on that selection.
    selected = promote_records(location, by=by, reason=reason, dry_run=True, **query)
    if not confirm_selection(
        selected, "promote", "promoted", yes=yes, dry_run=dry_run, as_json=as_json
    ):
        return
    done = promote_records(
        location, by=by, reason=reason, quarantine_ids=selected.quarantine_ids,
        bootstrap_servers=bootstrap_servers, open_messages=open_messages, **query,
    )  # fmt: skip
    show_bulk_promotion(done, as_json=as_json)


def show_bulk_promotion(done: BulkPromotion, *, as_json: bool) -> None:
    """Each promotion's outcome, then the tally; refusals say so with exit
    code 2, failures of the job's code with 1."""
    from ledger.quarantine import FAILED
    from ledger.redaction import shown

    if as_json:
        print_json(done.as_dict())
    else:
        for item in done.results:
            click.echo(shown(item["message"]))
        click.echo(shown(done.message))
        for skipped in done.skipped:
            why = shown(skipped["why"])
            click.echo(f"left pending {skipped['quarantine_id'][:8]}: {why}")
    if done.skipped:
        sys.exit(2)
    if any(item["outcome"] == FAILED for item in done.results):
        sys.exit(1)
