"""Errors raised by the ledger.

Every error names what to fix. The CLI prints the message on one line and
exits non-zero; nothing already recorded is touched when one is raised.
"""

from __future__ import annotations

__all__ = [
    "InputError",
    "JobFailed",
    "JobLoadError",
    "LedgerError",
    "LedgerNotCreated",
    "LedgerUnavailable",
    "OutputLost",
    "RunArchived",
    "RunHeld",
    "RunPaused",
    "Superseded",
    "UnknownRecord",
    "UnknownRun",
]


class LedgerError(Exception):
    """Base class of every error the ledger raises on purpose."""

    exit_code = 2


class LedgerUnavailable(LedgerError):
    """The store named by LEDGER_URL cannot be used."""

    def __init__(self, url: str, reason: str, fix: str | None = None) -> None:
        fix = fix or (
            "check LEDGER_URL (sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST:PORT/DB) and that the server is up"
        )
        super().__init__(f"cannot use the ledger at {url}: {reason}; {fix}")
        self.url = url
        self.reason = reason


class LedgerNotCreated(LedgerUnavailable):
    """The store is reachable but holds no ledger yet."""


class InputError(LedgerError):
    """The job's input cannot be read as the job expects."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = path
        self.problem = problem


class OutputLost(LedgerError):
    """The output no longer holds work the ledger's checkpoints record."""

    def __init__(self, step: str, where: str, expected: int, found: int) -> None:
        super().__init__(
            f"the output of step {step} at {where} holds {found:,} records but "
            f"the ledger's checkpoints record {expected:,} written: it was "
            "deleted, replaced or rolled back, so resuming would skip work; "
            "restore the output, or start over with `ledger run ... --new-run`"
        )
        self.step = step
        self.expected = expected
        self.found = found


class JobLoadError(LedgerError):
    """A job file or module could not be loaded."""


class UnknownRun(LedgerError):
    """No run matches the id or prefix the user gave."""

    def __init__(self, run_ref: str, detail: str = "") -> None:
        hint = detail or "list runs with `ledger status` and pass a full run id"
        super().__init__(f"no run matches '{run_ref}': {hint}")
        self.run_ref = run_ref


class UnknownRecord(LedgerError):
    """No quarantined record matches the id or prefix the user gave."""

    def __init__(self, quarantine_ref: str, detail: str = "") -> None:
        hint = detail or (
            "list them with `ledger quarantine list --state all` and pass an id "
            "or at least 4 of its first characters"
        )
        super().__init__(f"no quarantined record matches '{quarantine_ref}': {hint}")
        self.quarantine_ref = quarantine_ref


class RunHeld(LedgerError):
    """Another live worker holds the run this worker wanted to resume."""

    def __init__(self, run_id: str, holder: str) -> None:
        super().__init__(
            f"run {run_id} is held by a live worker ({holder}); wait for it "
            "to finish, or stop that worker and run the same command again"
        )
        self.run_id = run_id
        self.holder = holder


class RunArchived(LedgerError):
    """The run asked for left the live ledger for an archive folder."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id} ended and was archived; `ledger run --new-run` "
            "starts a new run of the same input, and `ledger archive load DIR "
            f"--run {run_id[:8]}` brings it back for review"
        )
        self.run_id = run_id


class RunPaused(LedgerError):
    """An operator paused the run; no worker may start it until lifted."""

    def __init__(self, run_id: str, by: str, reason: str) -> None:
        super().__init__(
            f"run {run_id} is paused by {by} ({reason}); "
            f"`ledger resume {run_id[:8]}` lifts the pause and goes on from "
            "its resume point"
        )
        self.run_id = run_id
        self.by = by


class Superseded(LedgerError):
    """This worker's attempt was taken over; its appends are refused."""

    def __init__(self, run_id: str, attempt: int, why: str | None = None) -> None:
        super().__init__(
            f"attempt {attempt} of run {run_id} was "
            f"{why or 'superseded by another worker'}; this worker stopped "
            "without recording anything further"
        )
        self.run_id = run_id
        self.attempt = attempt


class JobFailed(LedgerError):
    """The job raised; the failure is recorded and the run can resume."""

    exit_code = 1

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(message)
        self.run_id = run_id
