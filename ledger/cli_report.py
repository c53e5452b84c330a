"""`ledger report RUN`: a run's incident report, for a reviewer.

The report goes to stdout, or to `--output FILE`. A file is written
whole or not at all: the report is built first, then written beside the
target and renamed over it, so a reader never meets half a report. A
path that cannot be written is refused before the ledger is read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from ledger.cli_support import location_of
from ledger.config import LedgerLocation
from ledger.errors import LedgerError
from ledger.report_text import FORMATS, render

__all__ = ["ReportNotWritable", "report_cmd"]


class ReportNotWritable(LedgerError):
    """The report's output path cannot be written."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"cannot write the report to {path}: {problem}; pass --output with "
            "a file in a folder you can write, or leave it out to print it"
        )
        self.path = path


@click.command("report")
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="md",
    show_default=True,
    help="Markdown for a terminal, one self-contained HTML file, or JSON.",
)
@click.option(
    "--output",
    "output",
    type=click.Path(dir_okay=True, path_type=Path),
    default=None,
    metavar="FILE",
    help="Write the report to FILE instead of printing it.",
)
@click.pass_context
def report_cmd(ctx: click.Context, run_ref: str, fmt: str, output: Path | None) -> None:
    """A run's incident report: what ran, every event that mattered, each
    operator decision with who and why, and the resume point throughout."""
    from ledger.report_source import report_run

    location = location_of(ctx)
    if output is not None:
        check_writable(output, location)
    text = render(report_run(location, run_ref), fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    write_whole(output, text)
    click.echo(f"report written to {output}")


def check_writable(path: Path, location: LedgerLocation) -> None:
    """Refuses a path the report cannot be written to, before any work:
    a folder, a missing or read-only folder, a read-only file, or the
    ledger's own files."""
    target = path.expanduser()
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise ReportNotWritable(path, "it is a folder")
    if not folder.is_dir():
        raise ReportNotWritable(path, f"there is no folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ReportNotWritable(path, f"the folder {folder} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise ReportNotWritable(path, "the file is read-only")

    # Renamed over the ledger, a report would destroy it.
    ledger = location.sqlite_path
    if ledger is not None and target.exists():
        for own in (ledger, Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
            if own.exists() and own.samefile(target):
                raise ReportNotWritable(path, "it is the ledger's own file")


def write_whole(path: Path, text: str) -> None:
    """Writes the report beside `path`, then renames it over `path`."""
    target = path.expanduser()
    folder = target.parent if str(target.parent) else Path(".")
    temporary: str | None = None
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=folder
        )
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)

        # As any file the user writes: mkstemp's own mode is owner-only.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except OSError as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise ReportNotWritable(path, error.strerror or str(error)) from error


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
