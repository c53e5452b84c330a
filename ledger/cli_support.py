"""Small helpers shared by the CLI's command modules."""

from __future__ import annotations

from typing import Any

import click
import orjson

from ledger.config import LedgerLocation

__all__ = ["location_of", "print_json"]


def location_of(ctx: click.Context) -> LedgerLocation:
    location: LedgerLocation = ctx.obj["location"]
    return location


def print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
