"""Every stored event matches its JSON Schema, and every schema is in use.

The events come from real runs of the flights job through the library: a
clean run, a run whose output refuses one batch, and the resume of that run
after a worker died holding it; from a run of a small job whose records make
side effects through `context.effect`, completing, failing, repeating and
waiting for an operator's decision (see make_every_effect); and from two
members of a consumer group driven through the consumer's ledger side,
without Kafka (see consumer_events). Together they store every event type,
so a field no schema describes, or a schema no run produces, fails here.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar
from uuid import UUID, uuid4

import orjson
import pytest
from conftest import FLIGHTS_JOB, REPO, dead_worker
from consumer_events import record_consumer_runs
from effect_events import make_every_effect
from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic
from jsonschema import Draft202012Validator, FormatChecker

from ledger import Checkpoint, Job, JobFailed, Record, RunContext, Step
from ledger import archiving as archiving_module
from ledger import controls as controls_module
from ledger import effect as effect_module
from ledger import input_runs as input_runs_module
from ledger import messages as messages_module
from ledger import policy as policy_module
from ledger import quarantine as quarantine_module
from ledger import run as run_module
from ledger.archiving import Archiving
from ledger.config import parse_ledger_url
from ledger.controls import abandon, lift_pause, pause
from ledger.loader import load_job
from ledger.policy import set_policy
from ledger.promotion import FilePromotion
from ledger.quarantine import discard, promote
from ledger.redaction import Redaction
from ledger.run import Run
from ledger.runtime import describe_input, resolve_params, run_job
from ledger.store import Ledger, opened
from ledger.worker import current_worker, lease_until

SCHEMA_DIR = REPO / "schemas"
SCHEMA_BASE_URI = "https://recovery-ledger.invalid/schemas/"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

# The keys the store appends to every event's state, last (ledger.chain).
CHAIN_KEYS = ["prev_hash", "hash"]

# A superseded version kept for events stored in it: NAME.v1.json.
OLD_VERSION = re.compile(r"\.v(\d+)\.json$")

RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
)


class OutputRefused(Exception):
    """The failure FlakyFlights plants: its output refuses one batch."""


class _RefusingStep:
    """A step whose write raises on one batch, before it is checkpointed."""

    def __init__(self, step: Step, batch: int) -> None:
        self.step = step
        self.name = step.name
        self.position_kind = step.position_kind
        self.refused_batch = batch
        self.batch = 0

    def size(self) -> int | None:
        return self.step.size()

    def read(self, after: Checkpoint | None) -> Iterator[Record]:
        # The runtime numbers batches on from the checkpoint it resumes after.
        self.batch = after.batch + 1 if after else 0
        return self.step.read(after)

    def handle(self, record: Record, counters: Counter[str]) -> Any:
        return self.step.handle(record, counters)

    def write(self, outputs: Sequence[tuple[Record, Any]]) -> int:
        if self.batch == self.refused_batch:
            raise OutputRefused(f"the output refused batch {self.batch} of {self.name}")
        self.batch += 1
        return self.step.write(outputs)


class FlakyFlights(Job):
    """The flights job under a name of its own, with an output that can break.

    While `refuse` names a step and batch, writing that batch raises. The
    parameters do not say whether it breaks, so a FlakyFlights that does not
    refuse resumes the run a refusing one failed, as fixing an outage would.
    """

    name = "flights-import-flaky"
    version = "1.0.0"
    parameters: ClassVar[dict[str, Any]] = {"output": "flaky.sqlite", "planes": ""}

    def __init__(self, refuse: tuple[str, int] | None) -> None:
        self.flights = load_job(str(FLIGHTS_JOB))
        self.refuse = refuse

    def open(self, context: RunContext) -> Sequence[Step]:
        steps = self.flights.open(context)
        if self.refuse is None:
            return steps
        step_name, batch = self.refuse
        return [_RefusingStep(s, batch) if s.name == step_name else s for s in steps]

    def close(self, context: RunContext, *, completed: bool) -> None:
        self.flights.close(context, completed=completed)


def run_every_outcome(ledger: Ledger, source_path: Path, folder: Path) -> None:
    """A clean run, a failed attempt, a crashed attempt and a resume."""
    source = describe_input(source_path)

    # A clean run of the flights job: checkpoints, quarantines, completion.
    flights = load_job(str(FLIGHTS_JOB))
    params = resolve_params(
        flights, {"batch_size": "1000", "output": str(folder / "clean.sqlite")}
    )
    clean = run_job(ledger, flights, str(FLIGHTS_JOB), source, params)
    assert clean.status == "completed"

    # An operator discards one of its quarantined records.
    reviewed: Run = ledger.repository.get(clean.run_id)
    discarded = min(reviewed.quarantine_states)
    discard(reviewed, discarded, "ops@example", "test row")
    ledger.save(reviewed)

    # Another is promoted: the job's own code reads it again from the input
    # and rejects it again, so it is quarantined anew.
    malformed = next(
        event
        for event in ledger.repository.event_store.get(clean.run_id)
        if isinstance(event, Run.RecordQuarantined)
        and event.reason == "malformed"
        and event.quarantine_id != discarded
    )
    context = RunContext(run_id=clean.run_id, input=source, params=params)
    promotion = FilePromotion(flights, context, flights.open(context), completed=True)
    try:
        result = promotion.promote(reviewed, malformed)
    finally:
        promotion.close()
    assert (result.outcome, result.step) == ("rejected", "extract")
    promote(reviewed, malformed.quarantine_id, "ops@example", "parser fixed", result)
    ledger.save(reviewed)

    # A run whose output refuses batch 1 of enrich: the step and run fail.
    flaky_params = resolve_params(
        FlakyFlights(None),
        {"batch_size": "1000", "output": str(folder / "flaky.sqlite")},
    )
    with pytest.raises(JobFailed, match="OutputRefused") as failed:
        run_job(ledger, FlakyFlights(("enrich", 1)), __name__, source, flaky_params)

    # A worker claims the failed run and dies before it records anything.
    run: Run = ledger.repository.get(UUID(failed.value.run_id))
    run.start_attempt(dead_worker(), lease_until())
    ledger.save(run)

    # The next worker finds it dead, closes its attempt and resumes the run.
    resumed = run_job(ledger, FlakyFlights(None), __name__, source, flaky_params)
    assert (resumed.status, resumed.attempt) == ("completed", 3)

    # An operator abandons a run whose worker will not return.
    with pytest.raises(JobFailed) as again:
        run_job(
            ledger, FlakyFlights(("enrich", 1)), __name__, source, flaky_params,
            new_run=True,
        )  # fmt: skip
    lost: Run = ledger.repository.get(UUID(again.value.run_id))
    lost.start_attempt(dead_worker(), lease_until())
    abandon(lost, "ops@example", "the node is gone for good")
    ledger.save(lost)

    # An operator pauses a failed run and lifts the pause; then pauses a
    # held one, whose worker stops, renews its lease and goes on; a late
    # worker's appends are refused.
    with pytest.raises(JobFailed) as third:
        run_job(
            ledger, FlakyFlights(("enrich", 1)), __name__, source, flaky_params,
            new_run=True,
        )  # fmt: skip
    held: Run = ledger.repository.get(UUID(third.value.run_id))
    pause(held, "ops@example", "waiting for the vendor's fix")
    lift_pause(held, "ops@example", "fixed upstream")
    held.start_attempt(current_worker(), lease_until())
    pause(held, "ops@example", "maintenance window")
    held.acknowledge_pause(held.attempt)
    held.renew_lease(held.attempt, lease_until())
    lift_pause(held, "ops@example", "")
    held.refuse_appends(1, ["BatchCheckpointed"], "taken over by attempt 2")
    ledger.save(held)


def record_archiving(ledger: Ledger, tmp_path: Path) -> None:
    """An archive of a run and its load back, as `ledger archive` records
    them (the files themselves are tested in test_archive)."""
    summary = {
        "run_id": str(uuid4()),
        "job": "flights",
        "file": "run.jsonl.gz",
        "sha256": "ab" * 32,
        "events": 12,
        "heads": {str(uuid4()): "cd" * 32},
    }
    for kind in (Archiving.RunsArchived, Archiving.RunsLoaded):
        ledger.save(
            Archiving._create(
                kind,
                id=uuid4(),
                folder=str(tmp_path / "archive"),
                runs=[summary],
                by="auditor@example",
                reason="review of incident 7",
            )
        )


def record_policy(ledger: Ledger) -> None:
    """The ledger-wide policy set twice, as `ledger policy set` sets it."""
    set_policy(
        ledger,
        redaction=Redaction(fields={"ssn"}, paths=["card.number"]),
        retention_days=120,
        by="ops@example",
        reason="adopt a policy",
    )
    set_policy(
        ledger,
        redaction=Redaction(
            fields={"ssn"},
            patterns={"iban": r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}"},
            builtins=["email", "card"],
        ),
        retention_days=90,
        by="ops@example",
        reason="ibans too",
    )


def stored_events(ledger: Ledger) -> list[tuple[str, dict[str, Any]]]:
    return [
        (notification.topic, orjson.loads(notification.state))
        for notification in ledger.recorder.select_notifications(start=1, limit=100_000)
    ]


@pytest.fixture
def events(
    small_flights: Path, sqlite_url: str, tmp_path: Path
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, decoded state) of every event stored, in log order, by the
    flights runs, the effects' run and the consumer runs described above."""
    with opened(parse_ledger_url(sqlite_url)) as ledger:
        run_every_outcome(ledger, small_flights, tmp_path)
        make_every_effect(ledger, tmp_path)
        record_consumer_runs(ledger)
        record_policy(ledger)
        record_archiving(ledger, tmp_path)
        return stored_events(ledger)


def schema_files() -> list[Path]:
    return sorted(SCHEMA_DIR.glob("*.json"))


def current_schemas() -> dict[str, dict[str, Any]]:
    """The current schema of each stored topic, by topic."""
    schemas = {}
    for path in schema_files():
        if OLD_VERSION.search(path.name):
            continue
        schema = orjson.loads(path.read_bytes())
        schemas[schema["x-event-topic"]] = schema
    return schemas


# The modules that define stored events: nested in their aggregates, or (for
# ledger.messages, whose events a Run triggers) at module level.
EVENT_MODULES = (
    run_module,
    archiving_module,
    input_runs_module,
    messages_module,
    policy_module,
    controls_module,
    quarantine_module,
    effect_module,
)


def _defined_in(module: ModuleType, base: type) -> list[type]:
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, base)
        and value.__module__ == module.__name__
    ]


def event_classes() -> dict[str, type[Aggregate.Event]]:
    """Every event class the ledger's aggregates can store, by stored topic."""
    found: dict[str, type[Aggregate.Event]] = {}
    for module in EVENT_MODULES:
        for event in _defined_in(module, Aggregate.Event):
            found[get_topic(event)] = event
        for aggregate in _defined_in(module, Aggregate):
            for name, value in vars(aggregate).items():
                # The library gives every aggregate an `Event` and a `Created`
                # base class of its own; the ledger stores only its named
                # subclasses.
                if name in ("Event", "Created"):
                    continue
                if isinstance(value, type) and issubclass(value, Aggregate.Event):
                    found[get_topic(value)] = value
    return found


def _is_rfc3339(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if RFC3339.match(instance) is None:
        return False

    # The pattern lets through impossible dates and times; this refuses them.
    datetime.fromisoformat(instance)
    return True


def format_checker() -> FormatChecker:
    """jsonschema's format checks, with a date-time check of our own.

    jsonschema checks date-time only when the optional rfc3339-validator
    package is installed, and otherwise lets any string pass; this check
    does not depend on which extras happen to be installed.
    """
    checker = FormatChecker()
    checker.checks("date-time", raises=ValueError)(_is_rfc3339)
    return checker


def validator_for(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=format_checker())


def test_every_stored_event_matches_its_schema(
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    schemas = current_schemas()

    # Every topic stored has a schema, and every schema's topic was stored.
    seen = {topic for topic, _ in events}
    assert seen - set(schemas) == set(), "stored topics without a schema"
    assert set(schemas) - seen == set(), "schemas no run produced"

    # Every event validates against its topic's schema.
    validators = {topic: validator_for(schema) for topic, schema in schemas.items()}
    failures = [
        f"{topic} #{index}: {error.json_path}: {error.message}"
        for index, (topic, state) in enumerate(events)
        for error in validators[topic].iter_errors(state)
    ]
    assert failures == []

    # This version of the ledger chains every event it stores: the schemas
    # leave the chain keys optional only for events stored before it did.
    unchained = [topic for topic, state in events if list(state)[-2:] != CHAIN_KEYS]
    assert unchained == []


def test_every_event_class_has_a_current_schema_of_its_version() -> None:
    classes = event_classes()
    schemas = current_schemas()

    assert set(classes) == set(schemas)
    for topic, cls in classes.items():
        schema = schemas[topic]
        version = getattr(cls, "class_version", 1)
        assert schema["x-schema-version"] == version, topic

        # Each older version keeps its schema file and has an upcaster.
        for old in range(1, version):
            name = schema["title"]
            assert (SCHEMA_DIR / f"{name}.v{old}.json").is_file(), (topic, old)
            assert hasattr(cls, f"upcast_v{old}_v{old + 1}"), (topic, old)


@pytest.mark.parametrize("path", schema_files(), ids=lambda path: path.name)
def test_schema_file_is_a_strict_draft_2020_12_schema(path: Path) -> None:
    schema = orjson.loads(path.read_bytes())
    Draft202012Validator.check_schema(schema)

    # Named, identified and versioned as schemas/README.md says.
    name = OLD_VERSION.sub("", path.name).removesuffix(".json")
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["$id"] == SCHEMA_BASE_URI + path.name
    assert schema["title"] == name
    assert schema["x-event-topic"].endswith(f":{name}")
    assert schema["x-event-topic"] in event_classes()
    assert isinstance(schema["x-schema-version"], int)
    assert schema["x-schema-version"] >= 1
    assert schema["description"].strip()

    # Closed objects: nothing else allowed, and every property required but
    # the chain keys, absent from events stored before the ledger kept them.
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert sorted(schema["required"]) == sorted(
        set(schema["properties"]) - set(CHAIN_KEYS)
    )
    assert "timestamp" in schema["properties"]
    undescribed = [
        key
        for key, value in schema["properties"].items()
        if not value.get("description")
    ]
    assert undescribed == []


def test_schema_topics_are_unique_among_current_schemas() -> None:
    current = [path for path in schema_files() if not OLD_VERSION.search(path.name)]
    assert len(current_schemas()) == len(current)


def _drop_position(state: dict[str, Any]) -> None:
    del state["position"]


def _batch_as_text(state: dict[str, Any]) -> None:
    state["batch"] = str(state["batch"])


def _unknown_field(state: dict[str, Any]) -> None:
    state["operator"] = "someone"


def _negative_records(state: dict[str, Any]) -> None:
    state["records"] = -1


def _impossible_timestamp(state: dict[str, Any]) -> None:
    state["timestamp"] = "2026-02-30T25:61:00+00:00"


def _timestamp_not_utc(state: dict[str, Any]) -> None:
    state["timestamp"] = state["timestamp"].replace("+00:00", "+02:00")


def _counter_as_text(state: dict[str, Any]) -> None:
    state["counters"] = {"plane_unknown": "many"}


BREAKAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "position dropped": _drop_position,
    "batch as text": _batch_as_text,
    "unknown field": _unknown_field,
    "negative record count": _negative_records,
    "impossible timestamp": _impossible_timestamp,
    "timestamp not in UTC": _timestamp_not_utc,
    "counter as text": _counter_as_text,
}


def test_broken_checkpoints_do_not_validate(
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    topic = "ledger.run:Run.BatchCheckpointed"
    validator = validator_for(current_schemas()[topic])
    real = next(state for seen, state in events if seen == topic)
    assert validator.is_valid(real)

    # Each breakage alone must make the real state invalid.
    accepted = []
    for name, breakage in BREAKAGES.items():
        state = copy.deepcopy(real)
        breakage(state)
        if validator.is_valid(state):
            accepted.append(name)
    assert accepted == []


# In the first item of a consumer event's list: a field, and a value its
# schema must refuse.
ITEM_BREAKAGES = [
    ("PartitionsAssigned", "partitions", "divergence", "sideways"),
    ("PartitionsAssigned", "partitions", "source", "zookeeper"),
    ("PartitionsAssigned", "partitions", "kafka", -1),
    ("MessagesCheckpointed", "ranges", "lag", -1),
    ("MessagesCheckpointed", "ranges", "partition", "numbers-0"),
    ("MessagesSuperseded", "partitions", "recorded", None),
]


def test_broken_partition_items_do_not_validate(
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    schemas = current_schemas()
    accepted = []
    for name, items, field, value in ITEM_BREAKAGES:
        topic = f"ledger.messages:{name}"
        validator = validator_for(schemas[topic])
        real = next(state for seen, state in events if seen == topic)
        assert validator.is_valid(real), topic

        state = copy.deepcopy(real)
        state[items][0][field] = value
        if validator.is_valid(state):
            accepted.append((name, field, value))
    assert accepted == []


# In the first stored event of an effect topic: a field, and a value its
# schema must refuse.
EFFECT_BREAKAGES = [
    ("Effect.Intended", "record", ["record", "3"]),
    ("Effect.Intended", "record", ["record", 3, 4]),
    ("Effect.Intended", "record", ["message", "numbers", 0]),
    ("Effect.Intended", "actor", "worker 7"),
    ("Effect.Completed", "actor", "promotion by ops@example"),
    ("Effect.Completed", "result_kept", False),
    ("Effect.Failed", "outcome_known", None),
    ("Effect.Repeated", "after", "sideways"),
    ("Effect.Held", "attempt", -1),
    ("Effect.Confirmed", "reason", ""),
]


def test_broken_effect_events_do_not_validate(
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    schemas = current_schemas()
    accepted = []
    for name, field, value in EFFECT_BREAKAGES:
        topic = f"ledger.effect:{name}"
        validator = validator_for(schemas[topic])
        real = next(state for seen, state in events if seen == topic)
        assert validator.is_valid(real), topic

        state = copy.deepcopy(real)
        state[field] = value
        if validator.is_valid(state):
            accepted.append((name, field, value))
    assert accepted == []


# In the last stored PolicySet: a field, and a value its schema must refuse.
POLICY_BREAKAGES = [
    ("retention_days", 29),
    ("retention_days", 731),
    ("builtins", ["email", "phone"]),
    ("fields", ["SSN"]),
    ("paths", ["card..number"]),
    ("patterns", [{"name": "Iban", "regex": "x"}]),
    ("reason", ""),
]


def test_broken_policy_events_do_not_validate(
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    topic = "ledger.policy:LedgerPolicy.PolicySet"
    validator = validator_for(current_schemas()[topic])
    real = [state for seen, state in events if seen == topic][-1]
    assert validator.is_valid(real)

    accepted = []
    for field, value in POLICY_BREAKAGES:
        state = copy.deepcopy(real)
        state[field] = value
        if validator.is_valid(state):
            accepted.append((field, value))
    assert accepted == []
