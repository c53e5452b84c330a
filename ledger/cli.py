"""The `ledger` command: run jobs, and read what the ledger knows.

Every read command catches the read tables up with the log before it
answers and takes `--json` for scripts. Any bad input ends with one line
on stderr naming the fix and a non-zero exit code.
"""

from __future__ import annotations

import gc
import sys
from typing import Any, NoReturn

import click

from consumers.cli import consume
from ledger import faults
from ledger.cli_archive import archive
from ledger.cli_control import abandon_cmd, pause_cmd
from ledger.cli_effects import effects
from ledger.cli_keys import sweep_keys_cmd
from ledger.cli_policy import policy
from ledger.cli_promote import promote_cmd
from ledger.cli_quarantine import discard_cmd, show_cmd
from ledger.cli_read import explain_cmd, history, project, quarantine, status
from ledger.cli_report import report_cmd
from ledger.cli_rerun import rerun
from ledger.cli_run import resume, run
from ledger.cli_serve import serve
from ledger.cli_verify import verify_cmd
from ledger.config import parse_ledger_url
from ledger.errors import LedgerError
from ledger.logs import configure_logging, redact_uncaught
from ledger.sealing import check_master_key

__all__ = ["main"]


class _Group(click.Group):
    """Turns the ledger's own errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LedgerError as error:
            _fail(str(error), error.exit_code)
        except click.UsageError as error:
            # A missing option or a bad value is bad input like any other:
            # one line, naming the fix.
            command = ctx.invoked_subcommand or ""
            where = f"`ledger {command} --help`" if command else "`ledger --help`"
            _fail(f"{error.format_message().rstrip('.')}; see {where}", 2)


def _fail(message: str, code: int = 2) -> NoReturn:
    # An error can quote job data (a handler's exception): the last guard.
    from ledger.redaction import shown

    click.echo(f"error: {shown(message)}", err=True)
    sys.exit(code)


@click.group(cls=_Group)
@click.option(
    "--ledger-url",
    envvar="LEDGER_URL",
    default="",
    help="Where the ledger lives (default: sqlite:///.ledger/ledger.sqlite).",
)
@click.option(
    "--log-level",
    default="error",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log level of structured logs on stderr.",
)
@click.pass_context
def cli(ctx: click.Context, ledger_url: str, log_level: str) -> None:
    """An event-sourced recovery ledger for restartable jobs."""
    configure_logging(log_level)
    redact_uncaught()
    faults.check()
    check_master_key()
    ctx.obj = {"location": parse_ledger_url(ledger_url)}


# `consume` lives with the Kafka consumers; its module imports no Kafka
# client until the command runs.
for _command in (
    run,
    resume,
    rerun,
    consume,
    abandon_cmd,
    pause_cmd,
    status,
    history,
    explain_cmd,
    report_cmd,
    quarantine,
    effects,
    project,
    serve,
    policy,
    verify_cmd,
    archive,
):
    cli.add_command(_command)

# Decisions about quarantined records join the read group's `list`.
quarantine.add_command(show_cmd)
quarantine.add_command(discard_cmd)
quarantine.add_command(promote_cmd)
quarantine.add_command(sweep_keys_cmd)


def main() -> None:
    # Everything imported so far lives as long as the process: keeping it out
    # of the collector's sweeps saves several percent on long jobs.
    gc.freeze()
    cli(prog_name="ledger")
