"""Reopening a run's own job, input and parameters, checked first.

`ledger resume`, `ledger rerun` and a promotion of a quarantined record
all run the job that made a run again, on the input it read. Each check
here refuses, before anything is recorded or written, what would make
that work differ from the run's: another version of the job, another
input, an output that would clobber the ledger.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.config import LedgerLocation
from ledger.errors import InputError, LedgerError
from ledger.job import Job
from ledger.loader import load_job

if TYPE_CHECKING:
    from projections.views import RunView

__all__ = ["check_input", "keep_apart", "prepare_resume"]


def check_input(job: Job, path: Path) -> None:
    """The job's own input check; whatever it raises is bad input."""
    try:
        job.check_input(path)
    except LedgerError:
        raise
    except Exception as error:
        raise InputError(
            str(path),
            f"cannot be read as {job.name}'s input ({type(error).__name__}: {error})",
            "pass the file this job expects",
        ) from error


def keep_apart(job: Job, params: dict[str, Any], location: LedgerLocation) -> None:
    """Refuses a job output that is, or would clobber, the ledger's files."""
    for output in job.outputs(params):
        text = str(output)
        if not text or text in (".", ":memory:") or "mode=memory" in text:
            raise InputError(
                text or "''",
                "is not a file the output can live in",
                "name an output file: an in-memory output is lost at exit",
            )
        if location.sqlite_path is None:
            continue

        # The ledger is its file plus SQLite's -wal, -shm and -journal
        # files beside it; the same file may also be reached by a link.
        ledger_file = location.sqlite_path.resolve()
        resolved = output.resolve()
        same = resolved.exists() and ledger_file.exists()
        if str(resolved).startswith(str(ledger_file)) or (
            same and os.path.samefile(resolved, ledger_file)
        ):
            raise InputError(
                str(output),
                "is the ledger's own file",
                "write the job's output somewhere else: checkpoints must live "
                "apart from the output they protect",
            )


def _refuse_redacted(view: RunView) -> None:
    """A run whose parameters or input path held a secret was recorded with
    it redacted, so the ledger cannot give it back: the operator can."""
    from ledger.patterns import has_mark

    redacted = sorted(
        name for name, value in view.params.items() if has_mark(str(value))
    )
    if has_mark(str(view.input.get("path", ""))):
        redacted.insert(0, "--input")
    if not redacted:
        return
    named = ", ".join(
        f"--param {name}" if name != "--input" else name for name in redacted
    )
    raise InputError(
        f"run {view.run_id[:8]}",
        f"was recorded with {named} redacted (it held a secret), so the ledger "
        "cannot run it again by itself",
        f"run the same `ledger run {view.job_ref} --input PATH --param "
        "NAME=VALUE ...` with the real values: it finds this run and resumes it",
    )


def prepare_resume(
    view: RunView, max_quarantine_ratio: float | None
) -> tuple[Job, Path, dict[str, Any]]:
    """The run's own job, input and parameters, checked before anything is
    recorded: the same job version, and the same input bytes."""
    from ledger.runtime import describe_input

    job = load_job(view.job_ref)
    _refuse_redacted(view)
    if job.version != view.job_version:
        raise LedgerError(
            f"run {view.run_id} was made by {view.job} {view.job_version}, but "
            f"{view.job_ref} is now {job.version}; restore that version of the "
            "job to resume, or start a new run with `ledger run`"
        )
    input_path = Path(view.input["path"])
    if not input_path.is_file():
        raise InputError(
            str(input_path),
            f"run {view.run_id[:8]}'s input is gone",
            "put the same file back at that path to resume, or start a new run "
            "on the new path with `ledger run`",
        )
    source = describe_input(input_path)
    if source.sha256 != view.input["sha256"]:
        raise InputError(
            str(input_path),
            "changed since the run started (sha256 differs)",
            "restore the original file, or start a new run with `ledger run`",
        )
    params = dict(view.params)
    if max_quarantine_ratio is not None:
        params["max_quarantine_ratio"] = max_quarantine_ratio
    return job, input_path, params
