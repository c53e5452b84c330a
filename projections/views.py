"""What the read commands show: runs, attempts and quarantined records.

Each view is a frozen dataclass whose `as_dict` gives the stable field
names of `--json` output. Field names only ever get added, never renamed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ledger.errors import UnknownRun
from ledger.worker import Liveness, liveness
from projections.database import ReadDatabase
from projections.ids import id_prefix

__all__ = [
    "AttemptView",
    "QuarantineView",
    "RunView",
    "StepView",
    "find_run",
    "list_attempts",
    "list_quarantine",
    "list_runs",
]


@dataclass(frozen=True)
class StepView:
    step: str
    state: str
    batches: int
    records: int
    written: int
    quarantined: int
    last_first: int | None
    last_last: int | None
    last_position: int | None
    position_kind: str | None


@dataclass(frozen=True)
class RunView:
    run_id: str
    job: str
    job_version: str
    job_ref: str
    input: dict[str, Any]
    params: dict[str, Any]
    state: str
    attempts: int
    worker: dict[str, Any] | None
    lease_until: str | None
    current_step: str | None
    current_batch: int | None
    last_checkpoint: dict[str, Any] | None
    resume_point: dict[str, Any] | None
    batches_done: int
    failure: dict[str, Any] | None
    worker_evidence: str | None
    quarantined: int
    quarantined_by_reason: dict[str, int]
    counters: dict[str, int]
    steps: list[StepView] = field(default_factory=list)
    started_at: str = ""
    updated_at: str = ""
    ended_at: str | None = None

    # A consumer run's group, member, topics and partitions; None for a
    # file job. Each partition: partition, state, position (next offset to
    # read), lag, source, ledger_position, kafka_position, divergence.
    consumer: dict[str, Any] | None = None

    # Operator decisions about the run, oldest first: at, action, by,
    # reason, attempt, and target (the quarantine id a decision about one
    # record names; None for a decision about the whole run).
    actions: list[dict[str, Any]] = field(default_factory=list)
    paused: dict[str, Any] | None = None

    # Quarantined records an operator discarded; `quarantined` and
    # `quarantined_by_reason` count only the records still pending.
    discarded: int = 0

    # Whether a live worker holds the run (running, or paused and waiting).
    worker_alive: bool = False

    # Effects this run holds as uncertain, each waiting for a decision
    # (`ledger effects confirm|retry`); most also hold a record in
    # quarantine (reason `effect-uncertain`).
    effects_uncertain: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttemptView:
    run_id: str
    attempt: int
    started_at: str
    ended_at: str | None
    outcome: str
    worker: dict[str, Any] | None
    resume_from: dict[str, Any] | None
    batches: int
    failed_step: str | None
    failed_batch: int | None
    error_class: str | None
    error_message: str | None
    input_sha256: str | None

    # Checkpoints of this attempt the ledger refused, because another
    # consumer had recorded those partitions first: batch, partition,
    # tried (the position refused) and recorded (the one kept).
    superseded: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuarantineView:
    quarantine_id: str
    job: str
    run_id: str
    step: str
    batch: int
    record: int
    reason: str
    detail: str
    attempt: int
    payload: Any
    quarantined_at: str
    state: str

    # The operator's decision, once the record is no longer pending.
    decided_by: str | None = None
    decided_reason: str | None = None
    decided_at: str | None = None

    # Lineage: the record this one was promoted from (a promotion the
    # job's code rejected again quarantines it anew), and the record a
    # promotion of this one was quarantined again as.
    previous_id: str | None = None
    next_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _loads(text: str | None) -> Any:
    return orjson.loads(text) if text else None


def _resume_point(steps: list[StepView]) -> dict[str, Any] | None:
    """The first work after the last good checkpoint: None when all done."""
    for step in steps:
        if step.state == "completed":
            continue
        return {
            "step": step.step,
            "batch": step.batches,
            "from_record": 1 if step.last_last is None else step.last_last + 1,
            "position": step.last_position or 0,
            "position_kind": step.position_kind,
        }
    return None


async def _effective_state(
    db: ReadDatabase, row: dict[str, Any]
) -> tuple[str, Liveness | None]:
    """The run's state as its worker's liveness shows it, and that liveness
    (None when no worker holds the run).

    A run marked running whose worker is gone is `interrupted` (its process
    is gone on this host) or `abandoned-by-worker` (its lease ran out: a
    lost node or a frozen worker). A paused run stays paused either way:
    the operator's decision holds; the liveness says whether a worker waits.
    """
    if row["state"] not in ("running", "paused") or not row["worker"]:
        return row["state"], None
    if row["state"] == "paused" and not await _attempt_open(db, row["run_id"]):
        return "paused", None
    state = liveness(orjson.loads(row["worker"]), row["lease_until"] or "")
    if row["state"] == "paused" or state.alive:
        return row["state"], state
    return ("abandoned-by-worker" if state.lease_expired else "interrupted"), state


async def _attempt_open(db: ReadDatabase, run_id: str) -> bool:
    rows = await db.fetch(
        "SELECT outcome FROM proj_attempts WHERE run_id = $1 "
        "ORDER BY attempt DESC LIMIT 1",
        run_id,
    )
    return bool(rows) and str(rows[0]["outcome"]) == "running"


def _pause(actions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The operator's pause in force, if any: the last pause not lifted."""
    for action in reversed(actions):
        if action["action"] == "pause":
            return dict(action)
        if action["action"] == "resume":
            return None
    return None


async def _run_view(db: ReadDatabase, row: dict[str, Any]) -> RunView:
    run_id = row["run_id"]
    steps = [
        StepView(
            step=s["step"],
            state=s["state"],
            batches=s["batches"],
            records=s["records"],
            written=s["written"],
            quarantined=s["quarantined"],
            last_first=s["last_first"],
            last_last=s["last_last"],
            last_position=s["last_position"],
            position_kind=s["position_kind"],
        )
        for s in await db.fetch(
            "SELECT * FROM proj_steps WHERE run_id = $1 ORDER BY ordinal", run_id
        )
    ]
    reasons = await db.fetch(
        "SELECT state, reason, COUNT(*) AS n FROM proj_quarantine "
        "WHERE run_id = $1 GROUP BY state, reason ORDER BY reason",
        run_id,
    )
    counters = await db.fetch(
        "SELECT name, value FROM proj_counters WHERE run_id = $1 ORDER BY name",
        run_id,
    )
    uncertain = await db.fetch(
        "SELECT COUNT(*) AS n FROM proj_effects "
        "WHERE last_run_id = $1 AND state = 'uncertain'",
        run_id,
    )
    checkpoint = None
    if row["cp_step"] is not None:
        checkpoint = {
            "step": row["cp_step"],
            "batch": row["cp_batch"],
            "first_record": row["cp_first"],
            "last_record": row["cp_last"],
            "position": row["cp_position"],
            "position_kind": row["cp_position_kind"],
            "at": row["cp_at"],
        }
    failure = None
    if row["error_class"] is not None:
        failure = {
            "step": row["failed_step"],
            "batch": row["failed_batch"],
            "error_class": row["error_class"],
            "error_message": row["error_message"],
        }
    state, worker_state = await _effective_state(db, row)

    # What still waits in quarantine; decided records are counted apart.
    by_reason = {r["reason"]: int(r["n"]) for r in reasons if r["state"] == "pending"}
    discarded = sum(int(r["n"]) for r in reasons if r["state"] == "discarded")
    consumer = await _consumer_view(db, run_id)
    actions = [
        {
            "at": a["at"],
            "action": a["action"],
            "by": a["by_whom"],
            "reason": a["reason"],
            "attempt": a["attempt"],
            "target": a["target"],
        }
        for a in await db.fetch(
            "SELECT * FROM proj_actions WHERE run_id = $1 ORDER BY at", run_id
        )
    ]

    # A consumer's run ends when it is stopped, not when its topics run
    # dry: "completed" would read as "nothing left to consume".
    if consumer is not None and state == "completed":
        state = "stopped"
    return RunView(
        run_id=run_id,
        job=row["job"],
        job_version=row["job_version"],
        job_ref=row["job_ref"],
        input={
            "name": row["input_name"],
            "path": row["input_path"],
            "size": row["input_size"],
            "sha256": row["input_sha256"],
        },
        params=_loads(row["params"]) or {},
        state=state,
        attempts=row["attempts"],
        worker=_loads(row["worker"]),
        lease_until=row["lease_until"],
        current_step=row["current_step"],
        current_batch=row["current_batch"],
        last_checkpoint=checkpoint,
        resume_point=None
        if state in ("completed", "stopped")
        else _resume_point(steps),
        batches_done=row["batches_done"],
        failure=failure,
        worker_evidence=worker_state.evidence if worker_state else None,
        worker_alive=bool(worker_state and worker_state.alive),
        quarantined=sum(by_reason.values()),
        quarantined_by_reason=by_reason,
        counters={c["name"]: int(c["value"]) for c in counters},
        steps=steps,
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        ended_at=row["ended_at"],
        consumer=consumer,
        actions=actions,
        paused=_pause(actions),
        discarded=discarded,
        effects_uncertain=int(uncertain[0]["n"]),
    )


async def _consumer_view(db: ReadDatabase, run_id: str) -> dict[str, Any] | None:
    streams = await db.fetch("SELECT * FROM proj_streams WHERE run_id = $1", run_id)
    if not streams:
        return None
    partitions = await db.fetch(
        "SELECT part, state, position, lag, source, ledger_position, "
        "kafka_position, divergence, checkpointed_at FROM proj_partitions "
        "WHERE run_id = $1 ORDER BY part",
        run_id,
    )
    superseded = await db.fetch(
        "SELECT COUNT(*) AS n FROM proj_superseded WHERE run_id = $1", run_id
    )
    return {
        "group": streams[0]["grp"],
        "member": streams[0]["member"],
        "topics": _loads(streams[0]["topics"]),
        "partitions": [
            {"partition": p.pop("part"), **p} for p in (dict(p) for p in partitions)
        ],
        "superseded": int(superseded[0]["n"]),
    }


async def list_runs(db: ReadDatabase, job: str | None = None) -> list[RunView]:
    """Every job's latest run and every unfinished one; with a job, that
    job's runs, newest first."""
    if job is None:
        # A failed run stays in view after a newer run of the same job on
        # other input: it still needs a decision.
        rows = await db.fetch(
            "SELECT * FROM proj_runs r WHERE state <> 'completed' OR started_at = "
            "(SELECT MAX(started_at) FROM proj_runs WHERE job = r.job) "
            "ORDER BY job, started_at DESC"
        )
    else:
        rows = await db.fetch(
            "SELECT * FROM proj_runs WHERE job = $1 ORDER BY started_at DESC LIMIT 50",
            job,
        )
    return [await _run_view(db, row) for row in rows]


async def find_run(db: ReadDatabase, run_ref: str) -> RunView:
    """The run with this id, or the one run whose id starts with it."""
    # An id or prefix typed without its dashes is still that id.
    bare = run_ref.strip().lower().replace("-", "")
    try:
        ref = id_prefix(run_ref)
    except ValueError as problem:
        raise UnknownRun(
            run_ref, f"a run id {problem}; copy it from `ledger status`"
        ) from None
    rows = await db.fetch(
        "SELECT * FROM proj_runs WHERE run_id LIKE $1 ORDER BY started_at LIMIT 6",
        ref + "%",
    )
    if not rows:
        raise UnknownRun(
            run_ref,
            f"no run id starts with {bare[:32]}; list runs with `ledger status`",
        )
    if len(rows) > 1:
        shown = ", ".join(r["run_id"][:13] for r in rows[:5])
        raise UnknownRun(run_ref, f"it matches several runs ({shown}); give more")
    return await _run_view(db, rows[0])


async def list_attempts(
    db: ReadDatabase, run_id: str, run_state: str | None = None
) -> list[AttemptView]:
    """A run's attempts; an open one whose worker is gone shows as such."""
    rows = await db.fetch(
        "SELECT * FROM proj_attempts WHERE run_id = $1 ORDER BY attempt", run_id
    )
    lost = ("interrupted", "abandoned-by-worker")
    if run_state in lost and rows and rows[-1]["outcome"] == "running":
        rows[-1] = {**rows[-1], "outcome": run_state}

    # A consumer's attempt that ended cleanly stopped; its topics go on.
    if run_state == "stopped" and rows and rows[-1]["outcome"] == "completed":
        rows[-1] = {**rows[-1], "outcome": "stopped"}
    superseded: dict[int, list[dict[str, Any]]] = {}
    for item in await db.fetch(
        "SELECT attempt, batch, part, tried, recorded FROM proj_superseded "
        "WHERE run_id = $1 ORDER BY batch, part",
        run_id,
    ):
        superseded.setdefault(item["attempt"], []).append(
            {
                "batch": item["batch"],
                "partition": item["part"],
                "tried": item["tried"],
                "recorded": item["recorded"],
            }
        )
    return [
        AttemptView(
            run_id=r["run_id"],
            attempt=r["attempt"],
            started_at=r["started_at"],
            ended_at=r["ended_at"],
            outcome=r["outcome"],
            worker=_loads(r["worker"]),
            resume_from=_loads(r["resume_from"]),
            batches=r["batches"],
            failed_step=r["failed_step"],
            failed_batch=r["failed_batch"],
            error_class=r["error_class"],
            error_message=r["error_message"],
            input_sha256=r["input_sha256"],
            superseded=superseded.get(r["attempt"], []),
        )
        for r in rows
    ]


async def list_quarantine(
    db: ReadDatabase,
    job: str | None = None,
    limit: int = 100,
    run_id: str | None = None,
    state: str | None = None,
) -> tuple[int, list[QuarantineView]]:
    """The total count, and up to `limit` records, oldest first; of every
    run, of one job's runs, or of one run; in one state, or in any."""
    conditions: list[str] = []
    args: tuple[Any, ...] = ()
    if state:
        args += (state,)
        conditions.append(f"q.state = ${len(args)}")
    if job:
        args += (job,)
        conditions.append(f"r.job = ${len(args)}")
    if run_id:
        args += (run_id,)
        conditions.append(f"q.run_id = ${len(args)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    total = await db.fetch(
        "SELECT COUNT(*) AS n FROM proj_quarantine q "
        f"JOIN proj_runs r ON r.run_id = q.run_id {where}",
        *args,
    )
    rows = await db.fetch(
        "SELECT q.*, r.job FROM proj_quarantine q "
        f"JOIN proj_runs r ON r.run_id = q.run_id {where} "
        f"ORDER BY q.quarantined_at, q.record LIMIT {int(limit)}",
        *args,
    )
    views = [
        QuarantineView(
            quarantine_id=r["quarantine_id"],
            job=r["job"],
            run_id=r["run_id"],
            step=r["step"],
            batch=r["batch"],
            record=r["record"],
            reason=r["reason"],
            detail=r["detail"],
            attempt=r["attempt"],
            payload=_loads(r["payload"]),
            quarantined_at=r["quarantined_at"],
            state=r["state"],
            decided_by=r["decided_by"],
            decided_reason=r["decided_reason"],
            decided_at=r["decided_at"],
            previous_id=r.get("previous_id"),
            next_id=r.get("next_id"),
        )
        for r in rows
    ]
    return int(total[0]["n"]), views
