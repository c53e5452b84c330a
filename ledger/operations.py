"""Operator controls applied to the store: one code path for CLI and API.

Each function finds the run (by id or unique prefix), applies one control
to the run as stored, and saves it. A worker appending at the same moment
takes the run's next version first; the control is then checked again on
the run as it stands, so a control never lands on a state it was not
checked against. A refused control appends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ledger.config import LedgerLocation
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from ledger.run import Run

__all__ = ["ControlResult", "RunKeptChanging", "abandon_run", "apply_control"]

# How many times a control is re-checked against a run that a worker keeps
# moving; each try reloads the run.
_CONTROL_TRIES = 5


class RunKeptChanging(LedgerError):
    """A control lost every race against the run's own worker."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id} kept changing under this control; run the same command again"
        )
        self.run_id = run_id


@dataclass(frozen=True)
class ControlResult:
    """What a control did, for the CLI's line and the API's answer."""

    run_id: str
    action: str
    by: str
    reason: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_control(
    location: LedgerLocation, run_ref: str, control: Callable[[Run], None]
) -> str:
    """Runs `control(run)` on the stored run and saves it; returns the id."""
    from ledger.store import IntegrityError, opened
    from projections.access import catch_up_quietly, read
    from projections.views import find_run

    view = read(location, lambda db: find_run(db, run_ref))
    with opened(location) as ledger:
        for _ in range(_CONTROL_TRIES):
            run: Run = ledger.repository.get(UUID(view.run_id))
            control(run)
            try:
                ledger.save(run)
            except IntegrityError:
                continue
            break
        else:
            raise RunKeptChanging(view.run_id)
    catch_up_quietly(location)
    return view.run_id


def abandon_run(
    location: LedgerLocation, run_ref: str, *, by: str, reason: str
) -> ControlResult:
    """Marks a run whose worker will never return; it may then be resumed."""
    from ledger.controls import abandon

    run_id = apply_control(location, run_ref, lambda run: abandon(run, by, reason))
    return ControlResult(
        run_id=run_id,
        action="abandon",
        by=by,
        reason=reason.strip(),
        message=(
            f"run {run_id} abandoned by {by}: {reason.strip()}; its worker's "
            f"later appends are refused; `ledger resume {run_id[:8]}` starts a "
            "new attempt from its resume point"
        ),
    )
