"""What a projector handler returns, and the pieces handlers share."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["Statement", "counter_statements", "decision_of", "json_text"]

# One SQL statement with `$1`-style parameters, and its arguments.
Statement = tuple[str, tuple[Any, ...]]


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def counter_statements(run_id: str, counters: dict[str, int]) -> list[Statement]:
    """Adds a checkpoint's counters to the run's running totals."""
    return [
        (
            "INSERT INTO proj_counters (run_id, name, value) VALUES ($1, $2, $3) "
            "ON CONFLICT (run_id, name) DO UPDATE "
            "SET value = proj_counters.value + excluded.value",
            (run_id, name, value),
        )
        for name, value in sorted(counters.items())
    ]


def decision_of(row: dict[str, Any]) -> dict[str, str] | None:
    """An operator's decision as a read table's `decided_*` columns hold
    it: who, why and when; None before anyone decided."""
    if row["decided_by"] is None:
        return None
    return {
        "by": row["decided_by"],
        "reason": row["decided_reason"],
        "at": row["decided_at"],
    }
