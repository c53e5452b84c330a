"""Small helpers shared by the CLI's command modules."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson
from rich.console import Console

from ledger.config import LedgerLocation

if TYPE_CHECKING:
    from projections.database import ReadDatabase

__all__ = [
    "as_option",
    "bootstrap_option",
    "console",
    "location_of",
    "print_json",
    "read_shown",
    "use_output_policy",
]

T = TypeVar("T")

# Tables piped to a file or a pager are not squeezed to 80 columns.
_PIPED_WIDTH = 200


def console() -> Console:
    """A console for tables: the terminal's width, or wide when piped."""
    width = None if sys.stdout.isatty() else _PIPED_WIDTH

    # Cells hold recorded text, never markup: `[redacted:email]` is shown
    # as it is, and a record cannot style the operator's terminal.
    return Console(width=width, markup=False)


def location_of(ctx: click.Context) -> LedgerLocation:
    location: LedgerLocation = ctx.obj["location"]
    return location


def print_json(value: Any) -> None:
    from ledger.redaction import shown

    click.echo(orjson.dumps(shown(value), option=orjson.OPT_INDENT_2).decode())


def read_shown(
    location: LedgerLocation, query: Callable[[ReadDatabase], Awaitable[T]]
) -> T:
    """A read command's answer, through the last guard on recorded text:
    the ledger's policy is read in the same catch-up as the answer."""
    from ledger.policy import read_policy
    from ledger.redaction import shown
    from projections.access import read

    async def with_policy(db: ReadDatabase) -> T:
        await read_policy(db)
        return await query(db)

    answer: T = shown(read(location, with_policy))
    return answer


def use_output_policy(location: LedgerLocation) -> None:
    """Puts the ledger's policy in force for what a command shows, when the
    command reads through a service function rather than `read_shown`."""
    from ledger.errors import LedgerNotCreated
    from ledger.policy import read_policy
    from projections.access import read

    try:
        read(location, read_policy)
    except LedgerNotCreated:
        return


# The brokers a consumer's message is fetched again from, for a promotion.
bootstrap_option = click.option(
    "--bootstrap-servers",
    envvar="KAFKA_BOOTSTRAP_SERVERS",
    show_envvar=True,
    default=None,
    metavar="H:P",
    help="Kafka brokers to fetch a consumer's message from (default: where "
    "its run consumed from).",
)

# Who decides a control: recorded with it.
as_option = click.option(
    "--as",
    "as_name",
    default=None,
    metavar="NAME",
    help="Who decides (default: LEDGER_OPERATOR, else user@host).",
)
