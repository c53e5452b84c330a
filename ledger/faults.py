"""Failpoints: named places where a test can make this process die.

A crash test sets LEDGER_FAULT to `POINT:STEP:BATCH` (for example
`after_write:load:3`); when the worker reaches that point for that step and
batch, it kills itself with SIGKILL, exactly as a node loss or `kill -9`
would, with nothing flushed and no handler run. A fourth field, `:N`,
dies at the point's Nth passage in that batch (effects pass theirs once
per call). Unset, every check is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

from ledger.errors import InputError

__all__ = ["POINTS", "check", "enter_batch", "hit"]

# The places a batch can die, in the order a batch passes them.
POINTS = (
    "in_batch",
    "after_intent",
    "after_effect",
    "after_write",
    "in_checkpoint",
    "after_checkpoint",
)

_current: dict[str, object] = {"step": None, "batch": None}
_passed: dict[str, int] = {}


def _armed() -> tuple[str, str, int, int] | None:
    spec = os.environ.get("LEDGER_FAULT", "")
    if not spec:
        return None
    point, step, batch, *nth = spec.split(":")
    return point, step, int(batch), int(nth[0]) if nth else 1


def check() -> None:
    """Raises InputError when LEDGER_FAULT is set but does not name a
    failpoint a worker can reach: a typo would otherwise kill nothing."""
    spec = os.environ.get("LEDGER_FAULT", "")
    if not spec:
        return
    fields = spec.split(":")
    fix = (
        "set it to POINT:STEP:BATCH[:N], POINT one of "
        f"{', '.join(POINTS)} (for example after_write:load:3), or unset it"
    )
    if len(fields) not in (3, 4) or not fields[1]:
        raise InputError("LEDGER_FAULT", f"{spec!r} is not POINT:STEP:BATCH[:N]", fix)
    if fields[0] not in POINTS:
        raise InputError("LEDGER_FAULT", f"{fields[0]!r} is not a failpoint", fix)
    numbers = fields[2:]
    if not all(n.isdigit() for n in numbers) or (
        len(numbers) == 2 and numbers[1] == "0"
    ):
        raise InputError(
            "LEDGER_FAULT", "BATCH is a number from 0 and N one from 1", fix
        )


def enter_batch(step: str, batch: int) -> None:
    """Notes which batch is in progress, for failpoints below the runtime."""
    _current["step"] = step
    _current["batch"] = batch
    _passed.clear()


def hit(point: str) -> None:
    """Dies here if LEDGER_FAULT names this point, step and batch."""
    armed = _armed()
    if armed is None:
        return
    where = (point, _current["step"], _current["batch"])
    if armed[:3] != where:
        return
    _passed[point] = _passed.get(point, 0) + 1
    if _passed[point] == armed[3]:
        os.kill(os.getpid(), signal.SIGKILL)
