"""The index of runs per input version.

Starting a run appends to this index in the same transaction, so two
workers racing to start a run for the same input version cannot both
succeed: the second save is refused on the index's version.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

__all__ = ["InputRuns", "input_runs_id"]

_INPUT_NAMESPACE = uuid5(NAMESPACE_URL, "recovery-ledger:input-version")


def input_runs_id(input_key: str) -> UUID:
    return uuid5(_INPUT_NAMESPACE, input_key)


class InputRuns(Aggregate):
    """The runs made of one job against one input version, oldest first.

    Starting a run appends to this index in the same transaction, so two
    workers racing to start a run for the same input cannot both succeed.
    """

    class Indexed(Aggregate.Created):
        job: str
        input_key: str

    @classmethod
    def create(cls, job: str, input_key: str) -> InputRuns:
        return cls._create(
            cls.Indexed, id=input_runs_id(input_key), job=job, input_key=input_key
        )

    def __init__(self, *, job: str, input_key: str) -> None:
        self.job = job
        self.input_key = input_key
        self.run_ids: list[str] = []

    class RunAdded(Aggregate.Event):
        run_id: str

        def apply(self, index: InputRuns) -> None:
            index.run_ids.append(self.run_id)

    def add_run(self, run_id: UUID) -> None:
        self.trigger_event(self.RunAdded, run_id=str(run_id))
