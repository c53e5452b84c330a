"""Read-table updates for operator decisions (see `ledger.controls`).

Each decision closes or changes the run as the matching worker event
would, and is also listed in `proj_actions`, so that history shows every
human decision with who, when and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from projections.statements import Statement

__all__ = ["CONTROLS_TOPIC_PREFIX", "CONTROL_HANDLERS"]

CONTROLS_TOPIC_PREFIX = "ledger.controls:"


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


CONTROL_HANDLERS: dict[str, Callable[[str, dict[str, Any]], list[Statement]]] = {
    "RunAbandoned": _abandoned,
}
