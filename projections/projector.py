"""From one stored event to the statements that update the read tables.

The projector reads the stored contract (topic + JSON state, described by
`schemas/`), not the write side's classes, so the read side can be rebuilt
by any tool that can read the log. Statements use `$1`-style parameters;
the SQLite adapter rewrites them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from projections.controls import (
    CONTROL_HANDLERS,
    CONTROLS_TOPIC_PREFIX,
    RERUN_HANDLERS,
    RERUN_TOPIC_PREFIX,
    WORKER_CONTROL_HANDLERS,
)
from projections.effects import EFFECT_HANDLERS, EFFECT_TOPIC_PREFIX
from projections.messages import (
    MESSAGE_HANDLERS,
    MESSAGES_TOPIC_PREFIX,
    stream_started,
)
from projections.quarantine import QUARANTINE_HANDLERS, QUARANTINE_TOPIC_PREFIX
from projections.statements import Statement, counter_statements, json_text

__all__ = ["Statement", "statements_for"]

_Handler = Callable[[str, dict[str, Any]], list[Statement]]


def statements_for(run_id: str, topic: str, state: dict[str, Any]) -> list[Statement]:
    """The read-table updates one event implies; none for other topics."""
    module, _, name = topic.partition(":")
    handlers = _BY_MODULE.get(f"{module}:")
    if handlers is None:
        return []
    if module == "ledger.run":
        name = name.removeprefix("Run.")
    handler = handlers.get(name)
    return handler(run_id, state) if handler else []


def _started(run_id: str, e: dict[str, Any]) -> list[Statement]:
    source = e["input"]
    statements: list[Statement] = [
        (
            "INSERT INTO proj_runs (run_id, job, job_version, job_ref, input_name, "
            "input_path, input_size, input_sha256, params, steps, state, attempts, "
            "batches_done, started_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, "
            "$7, $8, $9, $10, 'started', 0, 0, $11, $11) "
            "ON CONFLICT (run_id) DO NOTHING",
            (
                run_id, e["job"], e["job_version"], e["job_ref"],
                source.get("name"), source.get("path"), source.get("size"),
                source.get("sha256"), json_text(e["params"]), json_text(e["steps"]),
                e["timestamp"],
            ),
        )
    ]  # fmt: skip
    for ordinal, step in enumerate(e["steps"]):
        statements.append(
            (
                "INSERT INTO proj_steps (run_id, step, ordinal, state, batches, "
                "records, written, quarantined) "
                "VALUES ($1, $2, $3, 'pending', 0, 0, 0, 0) "
                "ON CONFLICT (run_id, step) DO NOTHING",
                (run_id, step, ordinal),
            )
        )
    return statements + stream_started(run_id, e)


def _attempt_started(run_id: str, e: dict[str, Any]) -> list[Statement]:
    resume = json_text(e["resume"]) if e.get("resume") else None
    return [
        (
            "UPDATE proj_runs SET state = 'running', attempts = $2, worker = $3, "
            "lease_until = $4, updated_at = $5, ended_at = NULL, failed_step = NULL, "
            "failed_batch = NULL, error_class = NULL, error_message = NULL "
            "WHERE run_id = $1",
            (
                run_id,
                e["attempt"],
                json_text(e["worker"]),
                e["lease_until"],
                e["timestamp"],
            ),
        ),
        (
            "INSERT INTO proj_attempts (run_id, attempt, started_at, outcome, "
            "worker, resume_from, batches, input_sha256) "
            "SELECT $1, $2, $3, 'running', $4, $5, 0, input_sha256 "
            "FROM proj_runs WHERE run_id = $6 "
            "ON CONFLICT (run_id, attempt) DO NOTHING",
            (
                run_id,
                e["attempt"],
                e["timestamp"],
                json_text(e["worker"]),
                resume,
                run_id,
            ),
        ),
    ]


def _attempt_crashed(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        # The attempt ended when its worker last recorded anything, not
        # when the next worker noticed; the notice time goes in the message.
        (
            "UPDATE proj_attempts SET outcome = 'crashed', "
            "ended_at = (SELECT updated_at FROM proj_runs WHERE run_id = $1), "
            "error_class = 'WorkerLost', error_message = $3 "
            "WHERE run_id = $1 AND attempt = $2",
            (
                run_id,
                e["attempt"],
                f"{e['evidence']} (found at {e['timestamp'][:19]}Z)",
            ),
        ),
        (
            "UPDATE proj_runs SET state = 'crashed', updated_at = $2 WHERE run_id = $1",
            (run_id, e["timestamp"]),
        ),
    ]


def _step_started(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "UPDATE proj_steps SET state = 'running' WHERE run_id = $1 AND step = $2",
            (run_id, e["step"]),
        ),
        (
            "UPDATE proj_runs SET current_step = $2, current_batch = NULL, "
            "updated_at = $3 WHERE run_id = $1",
            (run_id, e["step"], e["timestamp"]),
        ),
    ]


def _batch_started(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "UPDATE proj_runs SET current_step = $2, current_batch = $3, "
            "lease_until = $4, updated_at = $5 WHERE run_id = $1",
            (run_id, e["step"], e["batch"], e["lease_until"], e["timestamp"]),
        )
    ]


def _batch_checkpointed(run_id: str, e: dict[str, Any]) -> list[Statement]:
    statements: list[Statement] = [
        (
            "UPDATE proj_steps SET batches = $3, records = records + $4, "
            "written = written + $5, quarantined = quarantined + $6, "
            "last_first = $7, last_last = $8, last_position = $9, "
            "position_kind = $10 WHERE run_id = $1 AND step = $2",
            (
                run_id, e["step"], e["batch"] + 1, e["records"], e["written"],
                e["quarantined"], e["first_record"], e["last_record"], e["position"],
                e["position_kind"],
            ),
        ),
        (
            "UPDATE proj_runs SET cp_step = $2, cp_batch = $3, cp_first = $4, "
            "cp_last = $5, cp_position = $6, cp_at = $7, lease_until = $8, "
            "updated_at = $7, batches_done = batches_done + 1, "
            "cp_position_kind = $9 WHERE run_id = $1",
            (
                run_id, e["step"], e["batch"], e["first_record"], e["last_record"],
                e["position"], e["timestamp"], e["lease_until"], e["position_kind"],
            ),
        ),
        (
            "UPDATE proj_attempts SET batches = batches + 1 "
            "WHERE run_id = $1 AND attempt = $2",
            (run_id, e["attempt"]),
        ),
    ]  # fmt: skip
    return statements + counter_statements(run_id, e["counters"])


def _record_quarantined(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "INSERT INTO proj_quarantine (quarantine_id, run_id, step, batch, "
            "record, reason, detail, attempt, payload, quarantined_at, state) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending') "
            "ON CONFLICT (quarantine_id) DO NOTHING",
            (
                e["quarantine_id"], run_id, e["step"], e["batch"], e["record"],
                e["reason"], e["detail"], e["attempt"], json_text(e["payload"]),
                e["timestamp"],
            ),
        )
    ]  # fmt: skip


def _step_completed(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "UPDATE proj_steps SET state = 'completed' WHERE run_id = $1 AND step = $2",
            (run_id, e["step"]),
        )
    ]


def _step_failed(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "UPDATE proj_steps SET state = 'failed' WHERE run_id = $1 AND step = $2",
            (run_id, e["step"]),
        )
    ]


def _run_failed(run_id: str, e: dict[str, Any]) -> list[Statement]:
    failure = (
        e["timestamp"],
        e["step"],
        e["batch"],
        e["error_class"],
        e["error_message"],
    )
    return [
        (
            "UPDATE proj_attempts SET outcome = 'failed', ended_at = $3, "
            "failed_step = $4, failed_batch = $5, error_class = $6, "
            "error_message = $7 WHERE run_id = $1 AND attempt = $2",
            (run_id, e["attempt"], *failure),
        ),
        (
            "UPDATE proj_runs SET state = 'failed', ended_at = $2, updated_at = $2, "
            "failed_step = $3, failed_batch = $4, error_class = $5, "
            "error_message = $6 WHERE run_id = $1",
            (run_id, *failure),
        ),
    ]


def _run_completed(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "UPDATE proj_attempts SET outcome = 'completed', ended_at = $3 "
            "WHERE run_id = $1 AND attempt = $2",
            (run_id, e["attempt"], e["timestamp"]),
        ),
        (
            "UPDATE proj_runs SET state = 'completed', ended_at = $2, "
            "updated_at = $2, current_step = NULL, current_batch = NULL "
            "WHERE run_id = $1",
            (run_id, e["timestamp"]),
        ),
    ]


_HANDLERS: dict[str, _Handler] = {
    "Started": _started,
    "AttemptStarted": _attempt_started,
    "AttemptCrashed": _attempt_crashed,
    "StepStarted": _step_started,
    "BatchStarted": _batch_started,
    "BatchCheckpointed": _batch_checkpointed,
    "RecordQuarantined": _record_quarantined,
    "StepCompleted": _step_completed,
    "StepFailed": _step_failed,
    "RunFailed": _run_failed,
    "RunCompleted": _run_completed,
    **WORKER_CONTROL_HANDLERS,
}

# Each module of the write side that stores events on a run, by topic prefix.
_BY_MODULE: dict[str, dict[str, _Handler]] = {
    CONTROLS_TOPIC_PREFIX: CONTROL_HANDLERS,
    EFFECT_TOPIC_PREFIX: EFFECT_HANDLERS,
    MESSAGES_TOPIC_PREFIX: MESSAGE_HANDLERS,
    QUARANTINE_TOPIC_PREFIX: QUARANTINE_HANDLERS,
    RERUN_TOPIC_PREFIX: RERUN_HANDLERS,
    "ledger.run:": _HANDLERS,  # the Run aggregate's own events: Run.NAME
}
