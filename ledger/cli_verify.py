"""`ledger verify [RUN]`: prove that no recorded event was edited."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING
from uuid import UUID

import click

from ledger.cli_support import location_of, print_json

if TYPE_CHECKING:
    from ledger.config import LedgerLocation
    from ledger.verification import Verification

__all__ = ["verify_cmd"]

# The exit code of a ledger whose chains do not hold; bad input exits 2.
BROKEN = 1


@click.command("verify")
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def verify_cmd(ctx: click.Context, run_ref: str | None, as_json: bool) -> None:
    """Recompute the hash chains and name the first event that does not match.

    With RUN: that run's events and those of the effects it made, with the
    hash each stream ends with (keep it elsewhere to prove later that the
    end was not cut off). Without: every event in the ledger. Exits 1 when
    a chain is broken.
    """
    from ledger.errors import UnknownRun
    from ledger.store import opened
    from ledger.verification import verify_ledger, verify_streams

    # The read tables only name the run's streams: they are not caught up
    # first, since an edited event may be one the projector cannot read.
    location = location_of(ctx)
    streams = asyncio.run(_streams(location, run_ref))
    with opened(location) as ledger:
        if run_ref is None:
            outcome = verify_ledger(ledger)
        else:
            outcome = verify_streams(ledger, [UUID(stream) for stream in streams])
            if outcome.events == 0:
                raise UnknownRun(
                    streams[0],
                    "the ledger holds no event of it; list runs with `ledger "
                    "status`, or bring an archived one back with `ledger "
                    "archive load DIR`",
                )

    if as_json:
        print_json(outcome.as_dict())
    else:
        click.echo(_describe(outcome, whole=run_ref is None))
    if not outcome.intact:
        sys.exit(BROKEN)


async def _streams(location: LedgerLocation, run_ref: str | None) -> list[str]:
    """The run's stream and its effects' streams; none for the whole ledger.
    Either way, refuses a location that holds no ledger."""
    from projections.access import open_read_database
    from projections.effects import effect_keys_of_run
    from projections.views import find_run

    db = await open_read_database(location)
    try:
        if run_ref is None:
            return []
        run_id = _whole_id(run_ref) or (await find_run(db, run_ref)).run_id
        return [run_id, *await effect_keys_of_run(db, run_id)]
    finally:
        await db.close()


def _whole_id(run_ref: str) -> str | None:
    # A whole run id needs no read table: a run the projector has not
    # reached yet is still verified.
    try:
        return str(UUID(run_ref.strip()))
    except ValueError:
        return None


def _describe(outcome: Verification, *, whole: bool) -> str:
    lines = []
    for kind, found in outcome.breaks:
        where = (
            f" (notification {found.notification_id})" if found.notification_id else ""
        )
        lines.append(
            f"BROKEN: {kind} {found.stream}, event {found.version} "
            f"({found.topic.partition(':')[2]}){where}: {found.problem}"
        )
    scope = "the ledger" if whole else "the run and its effects"
    summary = (
        f"checked {outcome.events:,} events in {outcome.streams:,} streams of {scope}: "
    )
    if outcome.intact:
        summary += "every chain holds"
    else:
        summary += f"{len(outcome.breaks)} broken; the events named do not match"
    lines.append(summary)
    for head in outcome.heads:
        lines.append(
            f"{head.kind} {head.stream}: {head.events} events, head {head.head}"
        )
    return "\n".join(lines)
