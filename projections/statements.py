"""What a projector handler returns, and the pieces handlers share."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["Statement", "counter_statements", "json_text"]

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
