"""recovery-ledger: an event-sourced recovery ledger for restartable jobs.

The public API for job authors and embedders; the CLI is `ledger.cli`.
"""

from ledger.errors import (
    InputError,
    JobFailed,
    JobLoadError,
    LedgerError,
    LedgerUnavailable,
    OutputLost,
    RunHeld,
    Superseded,
    UnknownRun,
)
from ledger.job import REDACTED, InputVersion, Job, Record, Reject, RunContext, Step
from ledger.redaction import Redaction
from ledger.run import Checkpoint, ResumePoint, Run

__all__ = [
    "REDACTED",
    "Checkpoint",
    "InputError",
    "InputVersion",
    "Job",
    "JobFailed",
    "JobLoadError",
    "LedgerError",
    "LedgerUnavailable",
    "OutputLost",
    "Record",
    "Redaction",
    "Reject",
    "ResumePoint",
    "Run",
    "RunContext",
    "RunHeld",
    "Step",
    "Superseded",
    "UnknownRun",
]
