"""The read tables, in SQL that SQLite and PostgreSQL both accept.

Every table is derived from the event log and nothing else: dropping them
all and catching up again gives the same rows. Numbers are BIGINT and
times are ISO 8601 text in UTC, which sort correctly as text.
"""

from __future__ import annotations

__all__ = [
    "ADDED_COLUMNS",
    "DDL",
    "PROJECTION_NAME",
    "TABLES",
    "UPGRADES",
    "forget_run",
]

PROJECTION_NAME = "ledger-read-model"

# In the order they were introduced: the last is the newest.
TABLES = (
    "proj_position",
    "proj_runs",
    "proj_steps",
    "proj_attempts",
    "proj_counters",
    "proj_quarantine",
    "proj_streams",
    "proj_partitions",
    "proj_superseded",
    "proj_actions",
    "proj_effects",
)

# The tables whose rows belong to one run, by its `run_id`: every table but
# the projector's position and the effects (kept by key, made by a run).
RUN_TABLES = tuple(t for t in TABLES if t not in ("proj_position", "proj_effects"))


def forget_run(
    run_id: str, effect_keys: list[str], mark: str
) -> list[tuple[str, tuple[str, ...]]]:
    """The statements that delete an archived run's rows (and those of the
    effects archived with it), with `mark` as the driver's placeholder."""
    statements: list[tuple[str, tuple[str, ...]]] = [
        (f"DELETE FROM {table} WHERE run_id = {mark}", (run_id,))
        for table in RUN_TABLES
    ]
    statements.extend(
        (f"DELETE FROM proj_effects WHERE effect_key = {mark}", (key,))
        for key in effect_keys
    )
    return statements


DDL = (
    """
    CREATE TABLE IF NOT EXISTS proj_position (
        name TEXT PRIMARY KEY,
        last_id BIGINT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS proj_runs (
        run_id TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        job_version TEXT NOT NULL,
        job_ref TEXT NOT NULL,
        input_name TEXT,
        input_path TEXT,
        input_size BIGINT,
        input_sha256 TEXT,
        params TEXT NOT NULL,
        steps TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        worker TEXT,
        lease_until TEXT,
        current_step TEXT,
        current_batch BIGINT,
        cp_step TEXT,
        cp_batch BIGINT,
        cp_first BIGINT,
        cp_last BIGINT,
        cp_position BIGINT,
        cp_position_kind TEXT,
        cp_at TEXT,
        batches_done BIGINT NOT NULL,
        failed_step TEXT,
        failed_batch BIGINT,
        error_class TEXT,
        error_message TEXT,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        ended_at TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS proj_runs_job ON proj_runs (job, started_at)",
    """
    CREATE TABLE IF NOT EXISTS proj_steps (
        run_id TEXT NOT NULL,
        step TEXT NOT NULL,
        ordinal BIGINT NOT NULL,
        state TEXT NOT NULL,
        batches BIGINT NOT NULL,
        records BIGINT NOT NULL,
        written BIGINT NOT NULL,
        quarantined BIGINT NOT NULL,
        last_first BIGINT,
        last_last BIGINT,
        last_position BIGINT,
        position_kind TEXT,
        PRIMARY KEY (run_id, step)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS proj_attempts (
        run_id TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        outcome TEXT NOT NULL,
        worker TEXT,
        resume_from TEXT,
        batches BIGINT NOT NULL,
        failed_step TEXT,
        failed_batch BIGINT,
        error_class TEXT,
        error_message TEXT,
        input_sha256 TEXT,
        PRIMARY KEY (run_id, attempt)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS proj_counters (
        run_id TEXT NOT NULL,
        name TEXT NOT NULL,
        value BIGINT NOT NULL,
        PRIMARY KEY (run_id, name)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS proj_quarantine (
        quarantine_id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        step TEXT NOT NULL,
        batch BIGINT NOT NULL,
        record BIGINT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        payload TEXT,
        quarantined_at TEXT NOT NULL,
        state TEXT NOT NULL,
        src_topic TEXT,
        src_partition BIGINT,
        src_offset BIGINT,
        decided_by TEXT,
        decided_reason TEXT,
        decided_at TEXT,
        previous_id TEXT,
        next_id TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS proj_quarantine_run ON proj_quarantine (run_id)",
    # Consumer runs: their group and member, where each partition stands,
    # and the checkpoints refused because another consumer got there first.
    """
    CREATE TABLE IF NOT EXISTS proj_streams (
        run_id TEXT PRIMARY KEY,
        grp TEXT NOT NULL,
        member TEXT NOT NULL,
        topics TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS proj_partitions (
        run_id TEXT NOT NULL,
        part TEXT NOT NULL,
        state TEXT NOT NULL,
        position BIGINT NOT NULL,
        lag BIGINT,
        source TEXT NOT NULL,
        ledger_position BIGINT,
        kafka_position BIGINT,
        divergence TEXT NOT NULL,
        assigned_at TEXT NOT NULL,
        checkpointed_at TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (run_id, part)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS proj_superseded (
        run_id TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        batch BIGINT NOT NULL,
        part TEXT NOT NULL,
        tried BIGINT NOT NULL,
        recorded BIGINT NOT NULL,
        superseded_at TEXT NOT NULL,
        PRIMARY KEY (run_id, batch, part)
    )
    """,
    # Operator decisions, with who, when and why.
    """
    CREATE TABLE IF NOT EXISTS proj_actions (
        run_id TEXT NOT NULL,
        at TEXT NOT NULL,
        action TEXT NOT NULL,
        by_whom TEXT NOT NULL,
        reason TEXT NOT NULL,
        attempt BIGINT,
        target TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS proj_actions_run ON proj_actions (run_id, at)",
    # Effects: one row per idempotency key, with the runs that made it.
    """
    CREATE TABLE IF NOT EXISTS proj_effects (
        effect_key TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        last_run_id TEXT NOT NULL,
        name TEXT NOT NULL,
        step TEXT NOT NULL,
        record TEXT NOT NULL,
        part TEXT NOT NULL,
        honours_keys BIGINT NOT NULL,
        state TEXT NOT NULL,
        calls BIGINT NOT NULL,
        repeats_after_crash BIGINT NOT NULL,
        attempt BIGINT NOT NULL,
        error TEXT,
        result TEXT,
        intended_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        decided_by TEXT,
        decided_reason TEXT,
        decided_at TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS proj_effects_run ON proj_effects (run_id)",
    "CREATE INDEX IF NOT EXISTS proj_effects_last_run ON proj_effects (last_run_id)",
)

# Columns added to tables that older ledgers already hold: each is added in
# place when missing (see projections.runner.ensure_tables), since a table
# created before it would otherwise refuse every statement that names it.
# Rows projected before then keep NULL in them; `ledger project --rebuild`
# fills them from the log.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("proj_quarantine", "src_topic", "TEXT"),
    ("proj_quarantine", "src_partition", "BIGINT"),
    ("proj_quarantine", "src_offset", "BIGINT"),
    ("proj_quarantine", "decided_by", "TEXT"),
    ("proj_quarantine", "decided_reason", "TEXT"),
    ("proj_quarantine", "decided_at", "TEXT"),
    ("proj_actions", "target", "TEXT"),
    # A record quarantined again by a promotion names the record it was
    # promoted from; that record names it back.
    ("proj_quarantine", "previous_id", "TEXT"),
    ("proj_quarantine", "next_id", "TEXT"),
)

# Run once, with the columns, on rows projected before they existed: a
# quarantined record waiting for a decision was stored as `quarantined`.
UPGRADES = ("UPDATE proj_quarantine SET state = 'pending' WHERE state = 'quarantined'",)
