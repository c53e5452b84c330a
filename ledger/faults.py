"""Failpoints: named places where a test can make this process die.

A crash test sets LEDGER_FAULT to `POINT:STEP:BATCH` (for example
`after_write:load:3`); when the worker reaches that point for that step and
batch, it kills itself with SIGKILL, exactly as a node loss or `kill -9`
would, with nothing flushed and no handler run. Unset, every check is one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "enter_batch", "hit"]

# The places a batch can die, in the order a batch passes them.
POINTS = ("in_batch", "after_write", "in_checkpoint", "after_checkpoint")

_current: dict[str, object] = {"step": None, "batch": None}


def _armed() -> tuple[str, str, int] | None:
    spec = os.environ.get("LEDGER_FAULT", "")
    if not spec:
        return None
    point, step, batch = spec.split(":")
    return point, step, int(batch)


def enter_batch(step: str, batch: int) -> None:
    """Notes which batch is in progress, for failpoints below the runtime."""
    _current["step"] = step
    _current["batch"] = batch


def hit(point: str) -> None:
    """Dies here if LEDGER_FAULT names this point, step and batch."""
    armed = _armed()
    if armed is None:
        return
    if armed == (point, _current["step"], _current["batch"]):
        os.kill(os.getpid(), signal.SIGKILL)
