"""Read-table updates for a consumer run's facts (see `ledger.messages`).

A consumer run is a run like any other in `proj_runs`, `proj_steps` and
`proj_attempts`; on top, `proj_partitions` holds where each of its
partitions stands (position, lag, how Kafka's committed offset compared
on assignment) and `proj_superseded` every checkpoint the ledger refused
because another consumer had recorded those partitions first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from projections.statements import Statement, counter_statements, json_text

__all__ = ["MESSAGES_TOPIC_PREFIX", "MESSAGE_HANDLERS", "stream_started"]


MESSAGES_TOPIC_PREFIX = "ledger.messages:"

_STEP = "consume"


def stream_started(run_id: str, e: dict[str, Any]) -> list[Statement]:
    """A consumer run's group, member and topics, from its Started event."""
    source = e["input"]
    if source.get("kind") != "kafka":
        return []
    return [
        (
            "INSERT INTO proj_streams (run_id, grp, member, topics) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (run_id) DO NOTHING",
            (run_id, source["group"], source["member"], json_text(source["topics"])),
        )
    ]


def _assigned(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "INSERT INTO proj_partitions (run_id, part, state, position, lag, "
            "source, ledger_position, kafka_position, divergence, assigned_at, "
            "updated_at) VALUES ($1, $2, 'assigned', $3, NULL, $4, $5, $6, $7, $8, "
            "$8) ON CONFLICT (run_id, part) DO UPDATE SET state = 'assigned', "
            "position = excluded.position, source = excluded.source, "
            "ledger_position = excluded.ledger_position, "
            "kafka_position = excluded.kafka_position, "
            "divergence = excluded.divergence, assigned_at = excluded.assigned_at, "
            "updated_at = excluded.updated_at",
            (
                run_id,
                item["partition"],
                item["start"],
                item["source"],
                item["ledger"],
                item["kafka"],
                item["divergence"],
                e["timestamp"],
            ),
        )
        for item in e["partitions"]
    ]


def _revoked(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "UPDATE proj_partitions SET state = 'revoked', updated_at = $3 "
            "WHERE run_id = $1 AND part = $2",
            (run_id, item["partition"], e["timestamp"]),
        )
        for item in e["partitions"]
    ]


def _started(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "UPDATE proj_runs SET current_step = $2, current_batch = $3, "
            "lease_until = $4, updated_at = $5 WHERE run_id = $1",
            (run_id, _STEP, e["batch"], e["lease_until"], e["timestamp"]),
        )
    ]


def _checkpointed(run_id: str, e: dict[str, Any]) -> list[Statement]:
    last = e["last_message"]
    statements: list[Statement] = [
        (
            "UPDATE proj_steps SET batches = $3, records = records + $4, "
            "written = written + $5, quarantined = quarantined + $6, "
            "last_first = $7, last_last = $8, last_position = $9, "
            "position_kind = 'message' WHERE run_id = $1 AND step = $2",
            (
                run_id, _STEP, e["batch"] + 1, e["records"], e["written"],
                e["quarantined"], e["first_message"], last, last,
            ),
        ),
        (
            "UPDATE proj_runs SET cp_step = $2, cp_batch = $3, cp_first = $4, "
            "cp_last = $5, cp_position = $6, cp_at = $7, lease_until = $8, "
            "updated_at = $7, batches_done = batches_done + 1, "
            "cp_position_kind = 'message' WHERE run_id = $1",
            (
                run_id, _STEP, e["batch"], e["first_message"], last, last,
                e["timestamp"], e["lease_until"],
            ),
        ),
        (
            "UPDATE proj_attempts SET batches = batches + 1 "
            "WHERE run_id = $1 AND attempt = $2",
            (run_id, e["attempt"]),
        ),
    ]  # fmt: skip
    for item in e["ranges"]:
        statements.append(
            (
                "UPDATE proj_partitions SET position = $3, lag = $4, "
                "checkpointed_at = $5, updated_at = $5 "
                "WHERE run_id = $1 AND part = $2",
                (run_id, item["partition"], item["next"], item["lag"], e["timestamp"]),
            )
        )
    return statements + counter_statements(run_id, e["counters"])


def _quarantined(run_id: str, e: dict[str, Any]) -> list[Statement]:
    where = f"{e['topic']}[{e['partition']}]@{e['offset']}"
    detail = f"{where} {e['error_class']}: {e['detail']}"
    if e["copied_to"]:
        detail += f" (copied to {e['copied_to']})"
    return [
        (
            "INSERT INTO proj_quarantine (quarantine_id, run_id, step, batch, "
            "record, reason, detail, attempt, payload, quarantined_at, state, "
            "src_topic, src_partition, src_offset) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11, "
            "$12, $5) ON CONFLICT (quarantine_id) DO NOTHING",
            (
                e["quarantine_id"], run_id, _STEP, e["batch"], e["offset"],
                e["reason"], detail[:1000], e["attempt"], json_text(e["payload"]),
                e["timestamp"], e["topic"], e["partition"],
            ),
        )
    ]  # fmt: skip


def _superseded(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "INSERT INTO proj_superseded (run_id, attempt, batch, part, "
            "tried, recorded, superseded_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (run_id, batch, part) DO NOTHING",
            (
                run_id,
                e["attempt"],
                e["batch"],
                item["partition"],
                item["next"],
                item["recorded"],
                e["timestamp"],
            ),
        )
        for item in e["partitions"]
    ] + [
        (
            "UPDATE proj_partitions SET state = 'superseded', updated_at = $3 "
            "WHERE run_id = $1 AND part = $2",
            (run_id, item["partition"], e["timestamp"]),
        )
        for item in e["partitions"]
    ]


MESSAGE_HANDLERS: dict[str, Callable[[str, dict[str, Any]], list[Statement]]] = {
    "PartitionsAssigned": _assigned,
    "PartitionsRevoked": _revoked,
    "MessagesStarted": _started,
    "MessagesCheckpointed": _checkpointed,
    "MessageQuarantined": _quarantined,
    "MessagesSuperseded": _superseded,
}
