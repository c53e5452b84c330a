"""Small helpers shared by the CLI's command modules."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson
from rich.console import Console

from ledger.config import LedgerLocation

__all__ = ["as_option", "bootstrap_option", "console", "location_of", "print_json"]

# Tables piped to a file or a pager are not squeezed to 80 columns.
_PIPED_WIDTH = 200


def console() -> Console:
    """A console for tables: the terminal's width, or wide when piped."""
    width = None if sys.stdout.isatty() else _PIPED_WIDTH
    return Console(width=width)


def location_of(ctx: click.Context) -> LedgerLocation:
    location: LedgerLocation = ctx.obj["location"]
    return location


def print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


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
