"""What a job author writes: a job made of steps.

A step reads records from its source, handles each one, and writes the
batch's output. The runtime groups records into batches, checkpoints each
batch in the ledger after its output is written, and on a restart asks the
step to read again from just after its last checkpoint.

The contract a step must keep:

- `read(after)` yields records in a stable order; `Record.position` is the
  source position just after the record, a number that only grows, so that
  reading from it yields the next record.
- `handle` raises `Reject` for a record that breaks the job's rules; the
  record is quarantined and the rest of the batch moves on. Any other
  exception fails the step.
- `write` must be replay-safe: a batch whose checkpoint did not commit is
  written again on resume, so writing the same outputs twice must leave
  them once (a deterministic key per record and an upsert).
- Any other write outside the ledger (an API call, a message sent) is an
  effect: the job declares it in `effects`, and `handle` or `write` makes
  it through `context.effect(name, record, call)`, which gives `call` the
  effect's idempotency key and never calls again what the ledger knows
  happened (`ledger.effects`).
- A later step reads what the step before it wrote: its record `number`
  is the earlier step's number, and its `data` is the earlier step's
  `handle` output as written. A promoted record (`ledger quarantine
  promote`) is handed from step to step in memory on that contract, as
  `Record(number, position=number, data=output)`.
- A `Reject`'s payload should be the record's data as `handle` received
  it: when a promotion finds the record no longer in its step's source,
  that payload stands in for it, kept whole and encrypted in the
  quarantine event (see `ledger.sealing`) until its key is destroyed.

What a job's data leaves in the ledger (quarantined payloads, error
messages, effects' results and errors, parameters) is redacted before it
is recorded: by the ledger-wide policy (`ledger policy`), and by the
job's own `redaction` and `sensitive_fields`, which can only add to it
(see `ledger.redaction`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar
from uuid import UUID

from ledger.checkpoint import Checkpoint
from ledger.patterns import REDACTED
from ledger.redaction import NOTHING, Redaction, for_job

if TYPE_CHECKING:
    from ledger.effects import EffectPolicy, EffectRegistry

_T = TypeVar("_T")

__all__ = [
    "REDACTED",
    "EffectContext",
    "InputVersion",
    "Job",
    "Record",
    "Reject",
    "RunContext",
    "Step",
    "redact_fields",
]


@dataclass(frozen=True)
class Record:
    """One record of a step's source."""

    number: int
    position: int
    data: Any


class Reject(Exception):
    """Raised by `Step.handle` to quarantine a record with a reason."""

    def __init__(self, reason: str, detail: str, payload: Any = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.payload = payload


@dataclass(frozen=True)
class InputVersion:
    """What a run reads: the file, its size and digest."""

    name: str
    path: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class EffectContext:
    """The part of a job's context that makes effects (see `ledger.effects`)."""

    # Set by the runtime that runs the job.
    registry: EffectRegistry | None = field(default=None, kw_only=True)

    def effect(
        self, name: str, record: Any, call: Callable[[str], _T], part: str = ""
    ) -> _T:
        """Makes the job's declared effect `name` for `record`, replay-safe:
        `call(key)` gets the effect's idempotency key and runs unless the
        ledger knows it already happened."""
        return _registry(self.registry).call(name, record, call, part)

    def key(self, name: str, record: Any, part: str = "") -> str:
        """The idempotency key of effect `name` for `record`: the same on
        every attempt, in every process."""
        return str(_registry(self.registry).key(name, record, part))

    def record_key(self, record: Any) -> str:
        """A key of the record itself, derived as effects' keys are, for an
        output keyed by record (an upsert's id); never an effect's key."""
        return str(_registry(self.registry).record_key(record))


@dataclass(frozen=True)
class RunContext(EffectContext):
    """What a job knows about the run it is executing."""

    run_id: UUID
    input: InputVersion
    params: dict[str, Any] = field(default_factory=dict)


def _registry(registry: EffectRegistry | None) -> EffectRegistry:
    if registry is None:
        raise RuntimeError(
            "this context has no effect registry: effects are made by jobs the "
            "ledger runs (`ledger run`, `ledger consume`, a promotion)"
        )
    return registry


def redact_fields(payload: Any, fields: frozenset[str]) -> Any:
    """The payload with the values of the named fields blanked, at any depth."""
    if isinstance(payload, dict):
        return {
            key: REDACTED if key in fields else redact_fields(value, fields)
            for key, value in payload.items()
        }
    if isinstance(payload, list):
        return [redact_fields(item, fields) for item in payload]
    return payload


class Step(Protocol):
    """A named stage of a job; see the module docstring for the contract."""

    name: str

    # What a position is, in words a person says: "file offset", "row".
    position_kind: str

    def read(self, after: Checkpoint | None) -> Iterator[Record]: ...

    def handle(self, record: Record, counters: Counter[str]) -> Any: ...

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int: ...

    def size(self) -> int | None:
        """The source's end position, for progress; None when unknown."""
        ...

    def verify(self, written: int) -> None:
        """Raises OutputLost when the output holds fewer than `written`
        records of this step: the ledger's checkpoints would then claim
        work that is no longer there. Optional; a step without it is
        trusted."""
        ...


class Job(ABC):
    """A named, versioned piece of work made of steps."""

    name: ClassVar[str]
    version: ClassVar[str]

    # Defaults for the job's own parameters; `--param NAME=VALUE` overrides
    # them, converted to the default's type.
    parameters: ClassVar[dict[str, Any]] = {}

    # Parameters that name files; recorded as absolute paths.
    path_parameters: ClassVar[frozenset[str]] = frozenset()

    # Labels for the counters steps keep, shown in the summary.
    counter_labels: ClassVar[dict[str, str]] = {}

    # Fields whose values never reach the ledger: a quarantined record's
    # payload keeps the key and loses the value.
    sensitive_fields: ClassVar[frozenset[str]] = frozenset()

    # More to redact before anything is recorded: field names, dotted paths
    # and named patterns, added to the ledger-wide policy.
    redaction: ClassVar[Redaction] = NOTHING

    # The side effects its steps make through `context.effect`, by name, and
    # whether each downstream honours idempotency keys.
    effects: ClassVar[dict[str, EffectPolicy]] = {}

    def default_input(self) -> Path | None:
        """The input used when `--input` is not given."""
        return None

    def redact(self, payload: Any) -> Any:
        """The payload (or text) as it may be recorded: the job's policy
        applied (see `policy`)."""
        return self.policy().redact(payload)

    def policy(self) -> Redaction:
        """The policy in force for this job: the ledger-wide one, its own
        `redaction`, and its `sensitive_fields` as field names."""
        return for_job(self.redaction, self.sensitive_fields)

    def check_input(self, path: Path) -> None:  # noqa: B027 - optional hook
        """Raises InputError when the file cannot be this job's input."""

    def outputs(self, params: dict[str, Any]) -> list[Path]:
        """Files the job writes, so the runtime can keep the ledger apart."""
        return []

    @abstractmethod
    def open(self, context: RunContext) -> Sequence[Step]:
        """Prepares the output and returns the steps, in order."""

    def close(self, context: RunContext, *, completed: bool) -> None:  # noqa: B027
        """Releases what `open` took; tidies up once the run completed."""
