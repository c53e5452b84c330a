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

__all__ = ["POINTS", "enter_batch", "hit"]

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
