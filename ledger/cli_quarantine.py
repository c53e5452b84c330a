"""Decisions about quarantined records: show one, discard one or many.

`ledger quarantine list` (in ledger.cli_read) finds records; these commands
show one in full and record an operator's decision about it, with who and
why, through the same service functions as the HTTP API.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from ledger.cli_support import as_option, location_of, print_json
from ledger.errors import LedgerError

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from ledger.operations import BulkResult
    from ledger.sealed_payloads import PayloadSeal
    from projections.quarantine import QuarantinedRecord

__all__ = [
    "ConfirmationNeeded",
    "bulk_filters",
    "bulk_query",
    "check_bulk_form",
    "confirm_selection",
    "count_line",
    "discard_cmd",
    "show_cmd",
]


class ConfirmationNeeded(LedgerError):
    """A bulk decision nobody confirmed: stdin is not a terminal."""

    def __init__(self, verb: str, count: int) -> None:
        super().__init__(
            f"refusing to {verb} {count:,} records without a confirmation, and "
            "stdin is not a terminal to ask on: pass --yes to confirm, or "
            "--dry-run to only count them"
        )
        self.count = count


@click.command("show")
@click.argument("quarantine_ref", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show_cmd(ctx: click.Context, quarantine_ref: str, as_json: bool) -> None:
    """One quarantined record in full: where, why, payload and decision."""
    from ledger.cli_support import use_output_policy
    from ledger.operations import show_record
    from ledger.redaction import shown

    use_output_policy(location_of(ctx))
    record = shown(show_record(location_of(ctx), quarantine_ref))
    seal = shown(_seal_of(ctx, record))
    if as_json:
        print_json({**record.as_dict(), "sealed_payload": seal.as_dict()})
        return
    for name, value in _lines(record, seal):
        click.echo(f"{name:<12} {value}")


def _seal_of(ctx: click.Context, record: QuarantinedRecord) -> PayloadSeal:
    """Whether the record's whole payload is kept sealed, or destroyed."""
    from ledger.sealed_payloads import seal_state
    from ledger.store import opened

    with opened(location_of(ctx)) as ledger:
        return seal_state(ledger, record.run_id, record.quarantine_id)


def _lines(record: QuarantinedRecord, seal: PayloadSeal) -> list[tuple[str, str]]:
    if record.topic is not None:
        where = (
            f"topic {record.topic}, partition {record.partition}, offset "
            f"{record.offset} (batch {record.batch})"
        )
    else:
        where = f"step {record.step}, batch {record.batch}, record {record.record:,}"
    decision = "none yet"
    if record.decision is not None:
        decision = (
            f"{record.state} by {record.decision['by']} at "
            f"{_time(record.decision['at'])}: {record.decision['reason']}"
        )
    lines = [
        ("record", f"{record.quarantine_id} ({record.kind}, {record.state})"),
        ("run", f"{record.run_id} of {record.job}, attempt {record.attempt}"),
        ("where", where),
        ("reason", record.reason),
        ("detail", record.detail),
        ("quarantined", _time(record.quarantined_at)),
        ("decision", decision),
        ("payload", _payload(record.payload)),
        ("sealed", seal.words()),
    ]

    # Its lineage: the promotion it came from, where its own went, and
    # each promotion (failed ones included).
    if record.previous_id is not None:
        lines.append(
            ("lineage", f"quarantined again when {record.previous_id} was promoted")
        )
    if record.next_id is not None:
        lines.append(("lineage", f"promoted, quarantined again as {record.next_id}"))
    for promotion in record.promotions:
        lines.append(
            (
                "promotion",
                f"{_time(promotion['at'])} by {promotion['by']}: {promotion['reason']}",
            )
        )

    # Records come from outside: a control character in one must not
    # steer the operator's terminal.
    return [(name, _printable(value)) for name, value in lines]


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _payload(payload: Any) -> str:
    if isinstance(payload, str):
        return repr(payload)
    return orjson.dumps(payload).decode()


def _time(value: str | None) -> str:
    return f"{value[:19].replace('T', ' ')} UTC" if value else ""


def bulk_filters(verb: str) -> Callable[[F], F]:
    """`--all` and the filters that choose the records a bulk decision
    acts on; shared by every decision about quarantined records."""
    options = (
        click.option(
            "--all",
            "every",
            is_flag=True,
            help=f"{verb} every pending record that matches the filters below.",
        ),
        click.option(
            "--job", default=None, help="With --all: only this job's records."
        ),
        click.option(
            "--run",
            "run_ref",
            default=None,
            metavar="RUN",
            help="With --all: only this run's records (an id or a unique prefix).",
        ),
        click.option(
            "--reason-is",
            "quarantine_reason",
            default=None,
            metavar="REASON",
            help="With --all: only records quarantined for this reason.",
        ),
        click.option(
            "--since",
            default=None,
            metavar="TIME",
            help="With --all: quarantined at or after TIME (ISO 8601, UTC unless "
            "an offset is given, or an age: 30m, 2h, 3d).",
        ),
        click.option(
            "--until",
            default=None,
            metavar="TIME",
            help="With --all: quarantined at or before TIME.",
        ),
    )

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@click.command("discard")
@click.argument("quarantine_ref", metavar="[ID]", required=False)
@bulk_filters("Discard")
@click.option(
    "--reason",
    default=None,
    help="Why the records will never be processed (recorded with each).",
)
@as_option
@click.option("--yes", is_flag=True, help="With --all: do not ask to confirm.")
@click.option(
    "--dry-run", is_flag=True, help="With --all: only count what would be discarded."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def discard_cmd(
    ctx: click.Context,
    quarantine_ref: str | None,
    every: bool,
    job: str | None,
    run_ref: str | None,
    quarantine_reason: str | None,
    since: str | None,
    until: str | None,
    reason: str | None,
    as_name: str | None,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Discard a quarantined record (ID), or every match of filters (--all).

    A discarded record stays in the log with its reason and payload
    preview; it no longer waits in quarantine, and the key of its sealed
    (whole) payload is destroyed. The decision is recorded with who and why.
    """
    from ledger.controls import operator
    from ledger.operations import discard_record, discard_records

    query = bulk_query(job, run_ref, quarantine_reason, since, until)
    check_bulk_form("discard", quarantine_ref, every, query, yes=yes, dry_run=dry_run)
    if reason is None and not dry_run:
        raise click.UsageError(
            "a reason is required: pass --reason TEXT saying why the records "
            "will never be processed"
        )
    by = operator(as_name)
    location = location_of(ctx)

    # One record.
    if quarantine_ref is not None:
        result = discard_record(location, quarantine_ref, by=by, reason=reason or "")
        if as_json:
            print_json(result.as_dict())
        else:
            click.echo(result.message)
        return

    # Many: count them first, then ask (or not), then act on that selection.
    selected = discard_records(
        location, by=by, reason=reason or "", dry_run=True, **query
    )
    if not confirm_selection(
        selected, "discard", "discarded", yes=yes, dry_run=dry_run, as_json=as_json
    ):
        return
    done = discard_records(
        location,
        by=by,
        reason=reason or "",
        quarantine_ids=selected.quarantine_ids,
        **query,
    )
    if as_json:
        print_json(done.as_dict())
    else:
        click.echo(done.message)
        for item in done.skipped:
            click.echo(f"left pending {item['quarantine_id'][:8]}: {item['why']}")

    # Records left pending were refused: say so with the exit code too.
    if done.skipped:
        sys.exit(2)


# The bulk filters' options, by their names in a selection's query.
_FILTER_OPTIONS = {
    "job": "--job",
    "run_ref": "--run",
    "quarantine_reason": "--reason-is",
    "since": "--since",
    "until": "--until",
}


def bulk_query(
    job: str | None,
    run_ref: str | None,
    quarantine_reason: str | None,
    since: str | None,
    until: str | None,
) -> dict[str, Any]:
    """The filters of `bulk_filters`, as the selection functions take them."""
    return {
        "job": job,
        "run_ref": run_ref,
        "quarantine_reason": quarantine_reason,
        "since": since,
        "until": until,
    }


def confirm_selection(
    selected: BulkResult,
    verb: str,
    done: str,
    *,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> bool:
    """Prints how many records a bulk decision matches; True when it is to
    be carried out: not a dry run, something matched, and confirmed (by
    --yes, or on the terminal)."""
    click.echo(count_line(selected, done, dry_run=dry_run), err=as_json)
    if dry_run or not selected.matched:
        if as_json:
            print_json(selected.as_dict())
        return False
    if not yes:
        if not sys.stdin.isatty():
            raise ConfirmationNeeded(verb, selected.matched)
        click.confirm(
            f"{verb} these {selected.matched:,} records?", abort=True, err=True
        )
    return True


def check_bulk_form(
    verb: str,
    quarantine_ref: str | None,
    every: bool,
    query: dict[str, Any],
    *,
    yes: bool,
    dry_run: bool,
) -> None:
    """One record by ID, or --all with filters: never both, never neither."""
    if quarantine_ref is not None and every:
        raise click.UsageError(
            "give one record's ID or --all with filters, not both: drop the ID "
            f"to {verb} every match, or drop --all to {verb} that record"
        )
    if quarantine_ref is None and not every:
        raise click.UsageError(
            f"say what to {verb}: one record's ID (see `ledger quarantine "
            "list`), or --all with filters such as --job, --run or --reason-is"
        )
    if quarantine_ref is not None:
        given = [
            _FILTER_OPTIONS[name] for name, value in query.items() if value is not None
        ]
        given += ["--yes"] if yes else []
        given += ["--dry-run"] if dry_run else []
        if given:
            raise click.UsageError(
                f"{', '.join(given)} only apply with --all; with one record's ID, "
                "drop them"
            )


def count_line(result: BulkResult, done: str, *, dry_run: bool) -> str:
    """How many pending records a bulk decision matches, by reason."""
    if not result.matched:
        return f"no pending records match; nothing to {result.action}"
    reasons = ", ".join(f"{n:,} {name}" for name, n in result.by_reason.items())
    one = result.matched == 1
    action = (
        f"would be {done} (dry run)" if dry_run else ("matches" if one else "match")
    )
    records = "record" if one else "records"
    return f"{result.matched:,} pending {records} {action}: {reasons}"
