"""Checkpoints and resume points: where a step's work is durably done.

A checkpoint names a committed batch by step, batch number, the records it
covered and the source position just after them. The resume point is the
first work after the last checkpoint of the first unfinished step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Checkpoint", "ResumePoint"]


@dataclass(frozen=True)
class Checkpoint:
    """A committed batch: what it covered and where its source resumes."""

    step: str
    batch: int
    first_record: int
    last_record: int
    position: int

    @classmethod
    def from_event(cls, fields: dict[str, Any]) -> Checkpoint:
        return cls(
            step=fields["step"],
            batch=fields["batch"],
            first_record=fields["first_record"],
            last_record=fields["last_record"],
            position=fields["position"],
        )


@dataclass(frozen=True)
class ResumePoint:
    """The first piece of work after the last good checkpoint of a step."""

    step: str
    batch: int
    after: Checkpoint | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "batch": self.batch,
            "after_record": self.after.last_record if self.after else 0,
            "position": self.after.position if self.after else 0,
        }
