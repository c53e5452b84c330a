"""A run's events folded, one at a time, through the `Run` aggregate.

`ledger status JOB --as-of` and `ledger report` both need a run as it
stood after a given event: its state, its last good checkpoint and its
resume point. They fold the run's stored events through the same `Run`
aggregate a worker uses, so the past is read by the code that wrote it,
and describe the result in the words and fields `ledger status` uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventsourcing.domain import Aggregate

    from ledger.run import Run

__all__ = ["Replay", "state_of"]


def state_of(run: Run) -> str:
    """The run's state as status names it: an operator's pause in force
    shows as paused, whatever the worker is doing until its next batch."""
    return "paused" if run.paused is not None else run.status


class Replay:
    """A run rebuilt event by event, with what status shows of it."""

    def __init__(self) -> None:
        self.run: Run | None = None
        self.events = 0
        self.last_at = ""
        self.last_checkpoint: dict[str, Any] | None = None

        # The position kind each step's checkpoints named, and when each
        # batch was last checkpointed: a rerun keeps earlier checkpoints,
        # and the kept one is then the last good checkpoint again.
        self.kinds: dict[str, str] = {}
        self._checkpointed_at: dict[tuple[str, int], str] = {}

    def apply(self, event: Aggregate.Event) -> Run:
        """Folds one more event of the run's stream, in order."""
        from ledger.messages import MessagesCheckpointed
        from ledger.rerun import RunRewound
        from ledger.run import Run

        self.run = event.mutate(self.run)
        assert self.run is not None
        self.events += 1
        self.last_at = event.timestamp.isoformat()

        # The last good checkpoint: the latest recorded, of any step.
        if isinstance(event, Run.BatchCheckpointed):
            self.kinds[event.step] = event.position_kind
            self._checkpoint(
                event.step,
                event.batch,
                event.first_record,
                event.last_record,
                event.position,
                event.position_kind,
            )
        elif isinstance(event, MessagesCheckpointed):
            # A consumer's one position that only grows: messages done.
            self.kinds["consume"] = "message"
            self._checkpoint(
                "consume",
                event.batch,
                event.first_message,
                event.last_message,
                event.last_message,
                "message",
            )
        elif isinstance(event, RunRewound):
            kept = event.checkpoint
            self.last_checkpoint = None
            if kept is not None:
                at = self._checkpointed_at.get((kept["step"], kept["batch"]), "")
                self.last_checkpoint = {**_checkpoint_fields(kept), "at": at}
        return self.run

    def _checkpoint(
        self,
        step: str,
        batch: int,
        first: int,
        last: int,
        position: int,
        kind: str,
    ) -> None:
        self._checkpointed_at[(step, batch)] = self.last_at
        self.last_checkpoint = {
            "step": step,
            "batch": batch,
            "first_record": first,
            "last_record": last,
            "position": position,
            "position_kind": kind,
            "at": self.last_at,
        }

    def resume_point(self) -> dict[str, Any] | None:
        """Where the next attempt starts, shaped as `ledger status --json`
        shows it; None once every step is done."""
        if self.run is None:
            return None
        point = self.run.resume_point()
        if point is None:
            return None
        after = point.after
        return {
            "step": point.step,
            "batch": point.batch,
            "from_record": after.last_record + 1 if after else 1,
            "position": after.position if after else 0,
            "position_kind": self.kinds.get(point.step),
        }


def _checkpoint_fields(recorded: dict[str, Any]) -> dict[str, Any]:
    return {
        name: recorded.get(name)
        for name in (
            "step",
            "batch",
            "first_record",
            "last_record",
            "position",
            "position_kind",
        )
    }
