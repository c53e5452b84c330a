"""`ledger effects`: a run's side effects, and the decision on an uncertain one.

`ledger effects RUN` lists what the run's handlers did outside the ledger
(one row per idempotency key) and how each ended; `show KEY` tells one
effect's story; `confirm KEY` and `retry KEY` are the one decision an
uncertain effect waits for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from ledger.cli_promote import open_messages
from ledger.cli_support import (
    as_option,
    bootstrap_option,
    console,
    location_of,
    print_json,
)
from projections.effects import EFFECT_STATES

if TYPE_CHECKING:
    from projections.effects import EffectListing, EffectRow

__all__ = ["effects"]


class _EffectsGroup(click.Group):
    """`ledger effects RUN` is `ledger effects list RUN`: the listing is
    what the command is mostly for, so it needs no verb."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group("effects", cls=_EffectsGroup, invoke_without_command=True)
@click.pass_context
def effects(ctx: click.Context) -> None:
    """A run's side effects: `ledger effects RUN` lists them; `confirm KEY`
    or `retry KEY` decides an uncertain one."""
    if ctx.invoked_subcommand is None:
        raise click.UsageError(
            "name a run: `ledger effects RUN` lists its effects "
            "(`ledger status` shows the runs)"
        )


@effects.command("list")
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--state",
    default=None,
    metavar="STATE",
    help="Only effects in this state: intended, completed, failed, uncertain "
    "or released.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_cmd(
    ctx: click.Context, run_ref: str, state: str | None, as_json: bool
) -> None:
    """The run's effects, one per idempotency key, and how each ended."""
    from ledger.cli_support import use_output_policy
    from ledger.effect_controls import list_effects
    from ledger.redaction import shown

    use_output_policy(location_of(ctx))
    listing = shown(list_effects(location_of(ctx), run_ref, state))
    if as_json:
        print_json(listing.as_dict())
        return
    out = console()
    if listing.effects:
        out.print(_table(listing.effects))
    out.print(_summary(listing), soft_wrap=True, highlight=False)


def _table(rows: list[EffectRow]) -> Table:
    table = Table(title="ledger effects")
    for column in ("key", "effect", "where", "state", "calls", "after crash", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        note = ""
        if row.decision is not None:
            note = f"decided by {row.decision['by']}: {row.decision['reason']}"
        elif row.error:
            note = row.error
        table.add_row(
            row.key[:8],
            row.name,
            f"{row.step}, {row.where}" + (f" ({row.part})" if row.part else ""),
            row.state,
            str(row.calls),
            str(row.repeated_after_crash),
            note,
        )
    return table


def _summary(listing: EffectListing) -> str:
    counts = listing.counts
    total = sum(counts[state] for state in EFFECT_STATES)
    short = listing.run_id[:8]
    if total == 0:
        return f"run {short} of {listing.job} made no effects."
    parts = [
        f"{counts[state]:,} {state}"
        for state in ("completed", "intended", "failed", "uncertain", "released")
        if counts[state]
    ]
    line = (
        f"run {short} of {listing.job}: {total:,} effects ({', '.join(parts)}), "
        f"{counts['calls']:,} calls, {counts['repeated_after_crash']:,} of them "
        "repeated after a crash"
    )
    if counts["uncertain"]:
        line += (
            f"; {counts['uncertain']:,} uncertain: each waits for one decision, "
            "once you have checked its downstream: `ledger effects confirm KEY "
            "--reason TEXT` (it happened) or `ledger effects retry KEY --reason "
            f"TEXT` (it did not); `ledger effects {short} --state uncertain` "
            "lists them"
        )
    return line + "."


@effects.command("show")
@click.argument("key_ref", metavar="KEY")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show_cmd(ctx: click.Context, key_ref: str, as_json: bool) -> None:
    """One effect in full: where, state, calls and decision."""
    from ledger.cli_support import use_output_policy
    from ledger.effect_controls import show_effect
    from ledger.redaction import shown

    use_output_policy(location_of(ctx))
    row = shown(show_effect(location_of(ctx), key_ref))
    if as_json:
        print_json(row.as_dict())
        return
    decision = "none"
    if row.decision is not None:
        decision = (
            f"{row.decision['by']} at {row.decision['at']}: {row.decision['reason']}"
        )
    lines = [
        ("key", row.key),
        ("effect", f"{row.name} ({_honours(row.honours_keys)})"),
        (
            "run",
            row.run_id
            if row.last_run_id == row.run_id
            else f"{row.run_id}, last touched by {row.last_run_id}",
        ),
        (
            "where",
            f"step {row.step}, {row.where}"
            + (f", part {row.part}" if row.part else ""),
        ),
        ("state", row.state),
        ("calls", f"{row.calls} ({row.repeated_after_crash} after a crash)"),
        ("attempt", str(row.attempt) if row.attempt else "0 (a promotion)"),
        ("error", row.error or "none"),
        ("decision", decision),
    ]
    for name, value in lines:
        click.echo(f"{name:<9} {value}")


def _honours(honours: bool) -> str:
    if honours:
        return "its downstream honours idempotency keys"
    return "its downstream does not honour idempotency keys"


def _decision_command(done: bool) -> Any:
    verb = "confirm" if done else "retry"
    meaning = (
        "It happened: record the uncertain effect as done, so it is never called again"
        if done
        else "It did not happen: call the uncertain effect again, with the same key"
    )

    @effects.command(verb, help=f"{meaning}; then promote the record waiting for it.")
    @click.argument("key_ref", metavar="KEY")
    @click.option(
        "--reason",
        required=True,
        help="What you checked on the downstream (recorded).",
    )
    @as_option
    @bootstrap_option
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @click.pass_context
    def command(
        ctx: click.Context,
        key_ref: str,
        reason: str,
        as_name: str | None,
        bootstrap_servers: str | None,
        as_json: bool,
    ) -> None:
        from ledger.controls import operator
        from ledger.effect_controls import decide_effect
        from ledger.redaction import shown

        result = decide_effect(
            location_of(ctx),
            key_ref,
            done=done,
            by=operator(as_name),
            reason=reason,
            bootstrap_servers=bootstrap_servers,
            open_messages=open_messages,
        )
        if as_json:
            print_json(result.as_dict())
            return
        click.echo(shown(result.message))

    return command


confirm_cmd = _decision_command(done=True)
retry_cmd = _decision_command(done=False)
