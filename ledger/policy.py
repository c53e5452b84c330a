"""The ledger-wide policy, recorded in the ledger so that changes are audited.

One stream with a fixed id holds it: `LedgerPolicy.Established` opens the
stream, and each `LedgerPolicy.PolicySet` records the whole policy as it
stands from then on (redaction settings and retention), with who set it
and why. A ledger nobody set a policy for redacts with every built-in
pattern and keeps 90 days.

Processes put the policy in force when they open the ledger: a job or a
consumer through `use_ledger_policy`, the read commands and the HTTP API
through `read_policy`, which reads the same events from the read side's
connection. Jobs merge their own redaction into it (`ledger.redaction`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import NAMESPACE_URL, UUID, uuid5

import orjson
from eventsourcing.domain import Aggregate

from ledger.config import EVENTS_TABLE
from ledger.controls import readable_reason
from ledger.errors import LedgerError
from ledger.redaction import BUILTINS, DEFAULT, Redaction, put_in_force

__all__ = [
    "POLICY_ID",
    "RETENTION_DAYS",
    "LedgerPolicy",
    "PolicyRefused",
    "PolicyState",
    "parse_retention",
    "read_policy",
    "set_policy",
    "use_ledger_policy",
]

POLICY_ID = uuid5(NAMESPACE_URL, "recovery-ledger:ledger-policy")

# How long the history of finished runs is kept, in days: the default, and
# the range accepted (an archiving job reads it from the policy).
RETENTION_DAYS = 90
RETENTION_MIN = 30
RETENTION_MAX = 730

_POLICY_SET_TOPIC = "ledger.policy:LedgerPolicy.PolicySet"


class PolicyRefused(LedgerError):
    """A policy setting that cannot be recorded; nothing was."""


def parse_retention(text: str) -> int:
    """`120d` or `120` as days; refused outside 30 to 730 days."""
    found = re.fullmatch(r"\s*(\d{1,5})\s*d?\s*", text)
    if found is None:
        raise PolicyRefused(
            f"--retention {text!r}: give a number of days, such as 120d"
        )
    days = int(found.group(1))
    check_retention(days)
    return days


def check_retention(days: int) -> None:
    if not RETENTION_MIN <= days <= RETENTION_MAX:
        raise PolicyRefused(
            f"--retention {days}d: keep history between {RETENTION_MIN}d and "
            f"{RETENTION_MAX}d (2 years); pass a retention in that range"
        )


class LedgerPolicy(Aggregate):
    """The ledger-wide policy's stream; its id is always `POLICY_ID`."""

    class Established(Aggregate.Created):
        """The policy stream begins; the first PolicySet follows it."""

    @classmethod
    def establish(cls) -> LedgerPolicy:
        return cls._create(cls.Established, id=POLICY_ID)

    def __init__(self) -> None:
        self.redaction = DEFAULT
        self.retention_days = RETENTION_DAYS
        self.job_retention: dict[str, int] = {}
        self.set_by: str | None = None
        self.reason: str | None = None
        self.changes = 0

    class PolicySet(Aggregate.Event):
        fields: list[str]
        paths: list[str]
        patterns: list[dict[str, str]]
        builtins: list[str]
        retention_days: int
        job_retention: dict[str, int]
        by: str
        reason: str

        def apply(self, policy: LedgerPolicy) -> None:
            policy.redaction = redaction_of(self.__dict__)
            policy.retention_days = self.retention_days
            policy.job_retention = dict(self.job_retention)
            policy.set_by = self.by
            policy.reason = self.reason
            policy.changes += 1

    def set(
        self,
        redaction: Redaction,
        retention_days: int,
        by: str,
        reason: str,
        job_retention: dict[str, int] | None = None,
    ) -> None:
        """Records the policy as it stands from now on; refused when it is
        the policy already in force, or a retention is out of range.
        `job_retention` (days by job name) overrides the ledger's retention
        for those jobs; None keeps the overrides in force."""
        check_retention(retention_days)
        jobs = dict(self.job_retention if job_retention is None else job_retention)
        for days in jobs.values():
            check_retention(days)
        recorded = readable_reason(reason)[:500]
        if self.changes and (redaction, retention_days, jobs) == (
            self.redaction,
            self.retention_days,
            self.job_retention,
        ):
            raise PolicyRefused(
                "the policy already says this, so nothing was recorded; "
                "`ledger policy show` prints it"
            )
        self.trigger_event(
            self.PolicySet,
            **redaction.as_dict(),
            retention_days=retention_days,
            job_retention=dict(sorted(jobs.items())),
            by=by,
            reason=recorded,
        )

    def retention_of(self, job: str) -> int:
        """Days of the job's history the live ledger keeps."""
        return self.job_retention.get(job, self.retention_days)


def redaction_of(state: dict[str, Any]) -> Redaction:
    """The redaction a stored PolicySet records. Built-ins this version
    does not know are left out, so an older ledger still opens."""
    return Redaction(
        fields=state["fields"],
        paths=state["paths"],
        patterns=[(item["name"], item["regex"]) for item in state["patterns"]],
        builtins=[name for name in state["builtins"] if name in BUILTINS],
    )


@dataclass(frozen=True)
class PolicyState:
    """The policy in force and every change that made it, oldest first."""

    redaction: Redaction = DEFAULT
    retention_days: int = RETENTION_DAYS
    job_retention: dict[str, int] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "redaction": self.redaction.as_dict(),
            "retention_days": self.retention_days,
            "job_retention": self.job_retention,
            "set": bool(self.changes),
            "changes": self.changes,
        }


def use_ledger_policy(ledger: Any) -> Redaction:
    """Reads the ledger-wide redaction from the store and puts it in force
    in this process; the default when none was ever set."""
    from ledger.store import AggregateNotFoundError

    try:
        policy: LedgerPolicy = ledger.repository.get(POLICY_ID)
        redaction = policy.redaction
    except AggregateNotFoundError:
        redaction = DEFAULT
    put_in_force(redaction)
    return redaction


def set_policy(
    ledger: Any,
    *,
    redaction: Redaction,
    retention_days: int,
    by: str,
    reason: str,
    job_retention: dict[str, int] | None = None,
) -> LedgerPolicy:
    """Records the ledger-wide policy; returns it as saved."""
    from ledger.store import AggregateNotFoundError

    try:
        policy: LedgerPolicy = ledger.repository.get(POLICY_ID)
    except AggregateNotFoundError:
        policy = LedgerPolicy.establish()
    policy.set(redaction, retention_days, by, reason, job_retention)
    ledger.save(policy)
    put_in_force(policy.redaction)
    return policy


class _EventsReader(Protocol):
    """What `read_policy` needs of a read-side database."""

    kind: str

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]: ...


async def read_policy(db: _EventsReader) -> PolicyState:
    """The policy as the read side's connection finds it in the events
    table, put in force in this process; the default when none was set."""
    stream: UUID | str = POLICY_ID.hex if db.kind == "sqlite" else POLICY_ID
    rows = await db.fetch(
        f"SELECT topic, state FROM {EVENTS_TABLE[db.kind]} WHERE originator_id = $1 "
        "ORDER BY originator_version",
        stream,
    )
    state = PolicyState()
    for row in rows:
        if row["topic"] != _POLICY_SET_TOPIC:
            continue
        event = orjson.loads(bytes(row["state"]))
        state = PolicyState(
            redaction=redaction_of(event),
            retention_days=int(event["retention_days"]),
            job_retention=dict(event["job_retention"]),
            changes=[
                *state.changes,
                {
                    "at": event["timestamp"],
                    "by": event["by"],
                    "reason": event["reason"],
                    "retention_days": event["retention_days"],
                    "job_retention": event["job_retention"],
                    "redaction": redaction_of(event).as_dict(),
                },
            ],
        )
    put_in_force(state.redaction)
    return state
