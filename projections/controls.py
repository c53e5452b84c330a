"""Read-table updates for operator decisions (see `ledger.controls`).

Each decision closes or changes the run as the matching worker event
would, and is also listed in `proj_actions`, so that history shows every
human decision with who, when and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from projections.statements import Statement

__all__ = [
    "CONTROLS_TOPIC_PREFIX",
    "CONTROL_HANDLERS",
    "RERUN_HANDLERS",
    "RERUN_TOPIC_PREFIX",
    "WORKER_CONTROL_HANDLERS",
]

CONTROLS_TOPIC_PREFIX = "ledger.controls:"
RERUN_TOPIC_PREFIX = "ledger.rerun:"


def _action(run_id: str, e: dict[str, Any], action: str) -> Statement:
    return (
        "INSERT INTO proj_actions (run_id, at, action, by_whom, reason, attempt) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        (run_id, e["timestamp"], action, e["by"], e["reason"], e["attempt"]),
    )


def _abandoned(run_id: str, e: dict[str, Any]) -> list[Statement]:
    why = f"by {e['by']}: {e['reason']}"
    statements: list[Statement] = [
        _action(run_id, e, "abandon"),
        (
            "UPDATE proj_runs SET state = 'abandoned', ended_at = $2, "
            "updated_at = $2 WHERE run_id = $1",
            (run_id, e["timestamp"]),
        ),
    ]
    if e["attempt"] is not None:
        statements.append(
            (
                "UPDATE proj_attempts SET outcome = 'abandoned', ended_at = $3, "
                "error_class = 'Abandoned', error_message = $4 "
                "WHERE run_id = $1 AND attempt = $2",
                (run_id, e["attempt"], e["timestamp"], why),
            )
        )
    return statements


def _pause_decision(action: str) -> Callable[[str, dict[str, Any]], list[Statement]]:
    """A pause or its lifting: listed, and the run's state as it says."""

    def handle(run_id: str, e: dict[str, Any]) -> list[Statement]:
        return [
            _action(run_id, e, action),
            (
                "UPDATE proj_runs SET state = $2, updated_at = $3 WHERE run_id = $1",
                (run_id, e["state"], e["timestamp"]),
            ),
        ]

    return handle


def _worker_paused(run_id: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "UPDATE proj_runs SET state = 'paused', current_batch = NULL, "
            "updated_at = $2 WHERE run_id = $1",
            (run_id, e["timestamp"]),
        )
    ]


def _lease_renewed(run_id: str, e: dict[str, Any]) -> list[Statement]:
    # Not `updated_at`: a heartbeat is not progress, and a crash is dated
    # by the worker's last recorded work.
    return [
        (
            "UPDATE proj_runs SET lease_until = $2 WHERE run_id = $1",
            (run_id, e["lease_until"]),
        )
    ]


def _appends_refused(run_id: str, e: dict[str, Any]) -> list[Statement]:
    refused = ", ".join(e["refused"]) or "nothing"
    return [
        (
            "INSERT INTO proj_actions (run_id, at, action, by_whom, reason, "
            "attempt) VALUES ($1, $2, 'refused', $3, $4, $5)",
            (
                run_id,
                e["timestamp"],
                f"the late worker of attempt {e['attempt']}",
                f"its {refused} superseded, never applied: {e['why']}",
                e["attempt"],
            ),
        )
    ]


CONTROL_HANDLERS: dict[str, Callable[[str, dict[str, Any]], list[Statement]]] = {
    "RunAbandoned": _abandoned,
    "PauseRequested": _pause_decision("pause"),
    "PauseLifted": _pause_decision("resume"),
}

# Worker events that answer a control or guard the run's ownership.
WORKER_CONTROL_HANDLERS: dict[str, Callable[[str, dict[str, Any]], list[Statement]]] = {
    "WorkerPaused": _worker_paused,
    "LeaseRenewed": _lease_renewed,
    "AppendsRefused": _appends_refused,
}


def _rewound(run_id: str, e: dict[str, Any]) -> list[Statement]:
    """A rerun from a named point: the kept state replaces what was there."""
    point = f"step {e['step']}, batch {e['batch']}"
    statements: list[Statement] = [
        (
            "INSERT INTO proj_actions (run_id, at, action, by_whom, reason, "
            "attempt) VALUES ($1, $2, 'rerun', $3, $4, NULL)",
            (run_id, e["timestamp"], e["by"], f"from {point}: {e['reason']}"),
        )
    ]
    for item in e["kept"]:
        step_row = (
            "UPDATE proj_steps SET state = 'pending', batches = $3, "
            "records = $4, written = $5, quarantined = $6, last_first = $7, "
            "last_last = $8, last_position = $9 WHERE run_id = $1 AND step = $2",
            (
                run_id, item["step"], item["batches"], item["records"],
                item["written"], item["quarantined"], item["last_first"],
                item["last_last"], item["last_position"],
            ),
        )  # fmt: skip
        statements.append(step_row)
    cp = e["checkpoint"] or {}
    run_row = (
        "UPDATE proj_runs SET state = 'rewound', cp_step = $2, cp_batch = $3, "
        "cp_first = $4, cp_last = $5, cp_position = $6, cp_position_kind = $7, "
        "batches_done = $8, current_step = NULL, current_batch = NULL, "
        "ended_at = NULL, failed_step = NULL, failed_batch = NULL, "
        "error_class = NULL, error_message = NULL, updated_at = $9 "
        "WHERE run_id = $1",
        (
            run_id, cp.get("step"), cp.get("batch"), cp.get("first_record"),
            cp.get("last_record"), cp.get("position"), cp.get("position_kind"),
            e["batches_done"], e["timestamp"],
        ),
    )  # fmt: skip
    statements.append(run_row)

    # The job's counters over the kept batches, replacing the old totals.
    statements.append(("DELETE FROM proj_counters WHERE run_id = $1", (run_id,)))
    statements += [
        (
            "INSERT INTO proj_counters (run_id, name, value) VALUES ($1, $2, $3)",
            (run_id, name, value),
        )
        for name, value in sorted(e["counters"].items())
    ]
    return statements


RERUN_HANDLERS: dict[str, Callable[[str, dict[str, Any]], list[Statement]]] = {
    "RunRewound": _rewound,
}
