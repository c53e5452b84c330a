"""Effects on the read side: one row per effect, and the queries on them.

`proj_effects` holds, for each effect (its stream id is its idempotency
key), the run that first intended it and the run that last touched it,
its state (`intended`, `completed`, `failed`, `uncertain`, `released`),
how often the downstream was called for it, and how often that was a
repeat after a crash. An operator's decision on an uncertain effect is
also a row of `proj_actions`, so that `ledger history` lists it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from ledger.errors import LedgerError
from projections.database import ReadDatabase
from projections.ids import id_prefix
from projections.statements import Statement, decision_of, json_text

__all__ = [
    "EFFECT_HANDLERS",
    "EFFECT_STATES",
    "EFFECT_TOPIC_PREFIX",
    "EffectListing",
    "EffectRow",
    "UnknownEffect",
    "count_effects",
    "effect_keys_of_run",
    "find_effect",
    "read_effects",
    "select_effects",
]

EFFECT_TOPIC_PREFIX = "ledger.effect:"

EFFECT_STATES = ("intended", "completed", "failed", "uncertain", "released")


class UnknownEffect(LedgerError):
    """No effect, or more than one, matches what was given."""

    def __init__(self, ref: str, why: str = "") -> None:
        super().__init__(
            f"no effect {ref!r} in the ledger"
            + (f": {why}" if why else "")
            + "; `ledger effects RUN` lists a run's effects with their keys"
        )


def _intended(key: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "INSERT INTO proj_effects (effect_key, run_id, last_run_id, name, step, "
            "record, part, honours_keys, state, calls, repeats_after_crash, "
            "attempt, intended_at, updated_at) VALUES ($1, $2, $2, $3, $4, $5, $6, "
            "$7, 'intended', 1, 0, $8, $9, $9) ON CONFLICT (effect_key) DO NOTHING",
            (
                key,
                e["run_id"],
                e["name"],
                e["step"],
                json_text(e["record"]),
                e["part"],
                1 if e["honours_keys"] else 0,
                e["attempt"],
                e["timestamp"],
            ),
        )
    ]


def _completed(key: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "UPDATE proj_effects SET state = 'completed', last_run_id = $2, "
            "attempt = $3, error = NULL, result = $4, updated_at = $5 "
            "WHERE effect_key = $1",
            (key, e["run_id"], e["attempt"], json_text(e["result"]), e["timestamp"]),
        )
    ]


def _failed(key: str, e: dict[str, Any]) -> list[Statement]:
    # A failure that cannot tell whether it landed is uncertain, unless the
    # downstream drops a repeated key; a decision taken before it (a retry)
    # is history then (`ledger history` keeps it), not the effect's state.
    return [
        (
            "UPDATE proj_effects SET state = CASE WHEN $3 = 1 OR honours_keys = 1 "
            "THEN 'failed' ELSE 'uncertain' END, last_run_id = $2, attempt = $4, "
            "error = $5, updated_at = $6, decided_by = NULL, decided_reason = NULL, "
            "decided_at = NULL WHERE effect_key = $1",
            (
                key,
                e["run_id"],
                1 if e["outcome_known"] else 0,
                e["attempt"],
                f"{e['error_class']}: {e['message']}",
                e["timestamp"],
            ),
        )
    ]


def _repeated(key: str, e: dict[str, Any]) -> list[Statement]:
    crash = 1 if e["after"] == "crash" else 0
    return [
        (
            "UPDATE proj_effects SET state = 'intended', last_run_id = $2, "
            "attempt = $3, calls = calls + 1, "
            "repeats_after_crash = repeats_after_crash + $4, updated_at = $5 "
            "WHERE effect_key = $1",
            (key, e["run_id"], e["attempt"], crash, e["timestamp"]),
        )
    ]


def _held(key: str, e: dict[str, Any]) -> list[Statement]:
    return [
        (
            "UPDATE proj_effects SET state = 'uncertain', last_run_id = $2, "
            "attempt = $3, error = $4, updated_at = $5, decided_by = NULL, "
            "decided_reason = NULL, decided_at = NULL WHERE effect_key = $1",
            (key, e["run_id"], e["attempt"], e["why"], e["timestamp"]),
        )
    ]


def _decided(state: str, action: str) -> Any:
    def handler(key: str, e: dict[str, Any]) -> list[Statement]:
        return [
            (
                "UPDATE proj_effects SET state = $2, decided_by = $3, "
                "decided_reason = $4, decided_at = $5, updated_at = $5, "
                "error = NULL WHERE effect_key = $1",
                (key, state, e["by"], e["reason"], e["timestamp"]),
            ),
            (
                "INSERT INTO proj_actions (run_id, at, action, by_whom, reason, "
                "attempt, target) SELECT run_id, $2, $3, $4, $5, NULL, $1 "
                "FROM proj_effects WHERE effect_key = $1",
                (key, e["timestamp"], action, e["by"], e["reason"]),
            ),
        ]

    return handler


EFFECT_HANDLERS = {
    "Effect.Intended": _intended,
    "Effect.Completed": _completed,
    "Effect.Failed": _failed,
    "Effect.Repeated": _repeated,
    "Effect.Held": _held,
    "Effect.Confirmed": _decided("completed", "effect confirmed"),
    "Effect.Released": _decided("released", "effect retried"),
}


@dataclass(frozen=True)
class EffectRow:
    """One effect as the read side knows it."""

    key: str
    run_id: str
    last_run_id: str
    name: str
    step: str
    record: list[Any]
    part: str
    honours_keys: bool
    state: str
    calls: int
    repeated_after_crash: int
    attempt: int
    error: str | None
    result: Any
    intended_at: str
    updated_at: str
    decision: dict[str, str] | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def where(self) -> str:
        """The record, as a person names it."""
        kind, *rest = self.record
        if kind == "message":
            topic, partition, offset = rest
            return f"{topic}[{partition}]@{offset}"
        return f"record {rest[0]}"


@dataclass(frozen=True)
class EffectListing:
    """A run's effects, with counts by state (and `calls`, and
    `repeated_after_crash`), as `ledger effects RUN --json` prints them."""

    run_id: str
    job: str
    counts: dict[str, int]
    effects: list[EffectRow]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(row: dict[str, Any]) -> EffectRow:
    decision = decision_of(row)
    return EffectRow(
        key=row["effect_key"],
        run_id=row["run_id"],
        last_run_id=row["last_run_id"],
        name=row["name"],
        step=row["step"],
        record=orjson.loads(row["record"]),
        part=row["part"],
        honours_keys=bool(row["honours_keys"]),
        state=row["state"],
        calls=int(row["calls"]),
        repeated_after_crash=int(row["repeats_after_crash"]),
        attempt=int(row["attempt"]),
        error=row["error"],
        result=orjson.loads(row["result"]) if row["result"] else None,
        intended_at=row["intended_at"],
        updated_at=row["updated_at"],
        decision=decision,
    )


async def select_effects(
    db: ReadDatabase, run_id: str, state: str | None = None
) -> list[EffectRow]:
    """The effects a run made or repeated, in the order they were intended."""
    args: tuple[Any, ...] = (run_id,)
    condition = "(run_id = $1 OR last_run_id = $1)"
    if state is not None:
        args += (state,)
        condition += " AND state = $2"
    rows = await db.fetch(
        f"SELECT * FROM proj_effects WHERE {condition} "
        "ORDER BY intended_at, effect_key",
        *args,
    )
    return [_row(row) for row in rows]


async def count_effects(db: ReadDatabase, run_id: str) -> dict[str, int]:
    """How many effects of the run are in each state, and how many calls
    were repeats after a crash."""
    rows = await db.fetch(
        "SELECT state, COUNT(*) AS n, SUM(repeats_after_crash) AS repeats, "
        "SUM(calls) AS calls FROM proj_effects "
        "WHERE run_id = $1 OR last_run_id = $1 GROUP BY state",
        run_id,
    )
    counts = {state: 0 for state in EFFECT_STATES}
    counts["repeated_after_crash"] = 0
    counts["calls"] = 0
    for row in rows:
        counts[row["state"]] = int(row["n"])
        counts["repeated_after_crash"] += int(row["repeats"] or 0)
        counts["calls"] += int(row["calls"] or 0)
    return counts


async def effect_keys_of_run(db: ReadDatabase, run_id: str) -> list[str]:
    """The keys of the effects the run made first or touched last."""
    rows = await db.fetch(
        "SELECT effect_key FROM proj_effects "
        "WHERE run_id = $1 OR last_run_id = $1 ORDER BY effect_key",
        run_id,
    )
    return [row["effect_key"] for row in rows]


async def find_effect(db: ReadDatabase, ref: str) -> EffectRow:
    """The effect with this key, or the one whose key starts with it."""
    try:
        wanted = id_prefix(ref)
    except ValueError as problem:
        raise UnknownEffect(ref, f"a key {problem}") from None
    rows = await db.fetch(
        "SELECT * FROM proj_effects WHERE effect_key LIKE $1 "
        "ORDER BY effect_key LIMIT 6",
        wanted + "%",
    )
    if not rows:
        raise UnknownEffect(ref)
    if len(rows) > 1:
        shown = ", ".join(row["effect_key"][:13] for row in rows[:5])
        raise UnknownEffect(ref, f"it matches several effects ({shown}); give more")
    return _row(rows[0])


async def read_effects(
    db: ReadDatabase, run_ref: str, state: str | None = None
) -> EffectListing:
    """The listing of one run (an id or unique prefix), narrowed to a state."""
    from projections.views import find_run

    if state is not None and state not in EFFECT_STATES:
        raise LedgerError(
            f"state {state!r} is not a state of an effect; use one of "
            f"{', '.join(EFFECT_STATES)}"
        )
    view = await find_run(db, run_ref)
    return EffectListing(
        run_id=view.run_id,
        job=view.job,
        counts=await count_effects(db, view.run_id),
        effects=await select_effects(db, view.run_id, state),
    )
