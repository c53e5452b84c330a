"""`ledger policy`: the ledger-wide redaction and retention, shown and set.

Every change is an event in the ledger (`LedgerPolicy.PolicySet`), with
who made it and why, so that an auditor sees when redaction changed.
Everything is checked before anything is recorded: a bad pattern, a
retention out of range or a missing reason records nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ledger.cli_support import as_option, location_of, print_json

if TYPE_CHECKING:
    from ledger.policy import PolicyState
    from ledger.redaction import Redaction

__all__ = ["policy"]


@click.group("policy")
def policy() -> None:
    """The ledger-wide policy: what is redacted before anything is recorded,
    and how many days of history are kept."""


@policy.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show_cmd(ctx: click.Context, as_json: bool) -> None:
    """The policy in force, and who changed it when and why."""
    from ledger.errors import LedgerNotCreated
    from ledger.policy import PolicyState, read_policy
    from projections.access import read

    try:
        state = read(location_of(ctx), read_policy)
    except LedgerNotCreated:
        state = PolicyState()
    if as_json:
        print_json(state.as_dict())
        return
    for name, value in _lines(state):
        click.echo(f"{name:<18} {value}")


def _lines(state: PolicyState) -> list[tuple[str, str]]:
    from ledger.redaction import BUILTINS, shown

    redaction = state.redaction
    off = [name for name in BUILTINS if name not in redaction.builtins]
    lines = [
        (
            "built-in patterns",
            ", ".join(n for n in BUILTINS if n in redaction.builtins),
        ),
        ("switched off", ", ".join(off) or "none"),
        ("fields", ", ".join(sorted(redaction.fields)) or "none"),
        ("paths", ", ".join(redaction.paths) or "none"),
    ]
    for name, regex in redaction.patterns:
        lines.append(("pattern", f"{name} = {regex}"))
    lines.append(("retention", f"{state.retention_days} days"))
    for job, days in state.job_retention.items():
        lines.append(("retention of job", f"{job}: {days} days"))
    if not state.changes:
        lines.append(("set", "never: the default policy is in force"))
    for change in state.changes:
        when = str(change["at"])[:19].replace("T", " ")
        lines.append(
            ("changed", f"{when} UTC by {change['by']}: {shown(change['reason'])}")
        )
    return lines


@policy.command("set")
@click.option(
    "--retention",
    default=None,
    metavar="DAYS",
    help="Days of history to keep, 30d to 730d (default 90d).",
)
@click.option(
    "--job-retention",
    "job_retention",
    multiple=True,
    metavar="JOB=DAYS",
    help="Keep this job's history this long instead (30d to 730d); repeat for several.",
)
@click.option(
    "--no-job-retention",
    "dropped_jobs",
    multiple=True,
    metavar="JOB",
    help="The job follows the ledger's retention again.",
)
@click.option(
    "--redact-field",
    "fields",
    multiple=True,
    metavar="NAME",
    help="Also redact the values of fields with this name, at any depth, "
    "whatever their case; repeat for several.",
)
@click.option(
    "--redact-path",
    "paths",
    multiple=True,
    metavar="PATH",
    help="Also redact the value at this dotted path from a payload's root "
    "(card.number, customer.*.email, items[0].sku); repeat for several.",
)
@click.option(
    "--redact-pattern",
    "patterns",
    multiple=True,
    metavar="NAME=REGEX",
    help="Also replace what this regular expression matches with "
    "[redacted:NAME]; repeat for several. A pattern is recorded as written: "
    "describe a secret's shape, never a secret itself.",
)
@click.option(
    "--no-builtin",
    "switched_off",
    multiple=True,
    metavar="NAME",
    help="Switch a built-in pattern off: email, card, bearer, url_password.",
)
@click.option(
    "--builtin",
    "switched_on",
    multiple=True,
    metavar="NAME",
    help="Switch a built-in pattern back on.",
)
@click.option(
    "--reset",
    is_flag=True,
    help="Start from the default policy (every built-in, nothing else, 90 "
    "days) instead of the one in force; the options above then apply to it.",
)
@click.option("--reason", default=None, help="Why the policy changes (recorded).")
@as_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def set_cmd(
    ctx: click.Context,
    retention: str | None,
    job_retention: tuple[str, ...],
    dropped_jobs: tuple[str, ...],
    fields: tuple[str, ...],
    paths: tuple[str, ...],
    patterns: tuple[str, ...],
    switched_off: tuple[str, ...],
    switched_on: tuple[str, ...],
    reset: bool,
    reason: str | None,
    as_name: str | None,
    as_json: bool,
) -> None:
    """Change the ledger-wide policy: what is given is added to the policy in
    force (or to the default, with --reset); the rest is kept."""
    from ledger.controls import operator, readable_reason
    from ledger.policy import (
        POLICY_ID,
        RETENTION_DAYS,
        LedgerPolicy,
        PolicyRefused,
        parse_retention,
        set_policy,
    )
    from ledger.redaction import DEFAULT, Redaction
    from ledger.store import AggregateNotFoundError, IntegrityError, opened

    # Everything the command was given is checked before the ledger opens.
    if reason is None:
        raise PolicyRefused(
            "a reason is required: pass --reason TEXT saying why the policy "
            "changes (it is recorded with the change)"
        )
    readable_reason(reason)
    days = parse_retention(retention) if retention is not None else None
    job_days = dict(_job_retention(text) for text in job_retention)
    added = Redaction(
        fields=fields,
        paths=paths,
        patterns=[_pattern(text) for text in patterns],
        builtins=switched_on,
    )
    Redaction(builtins=switched_off)

    with opened(location_of(ctx)) as ledger:
        try:
            current: LedgerPolicy = ledger.repository.get(POLICY_ID)
            base, kept_days = current.redaction, current.retention_days
            jobs = dict(current.job_retention)
        except AggregateNotFoundError:
            base, kept_days, jobs = DEFAULT, RETENTION_DAYS, {}
        if reset:
            base, kept_days, jobs = DEFAULT, RETENTION_DAYS, {}
        jobs.update(job_days)
        for job in dropped_jobs:
            jobs.pop(job, None)
        wanted = _changed(base, added, switched_off)
        try:
            saved = set_policy(
                ledger,
                redaction=wanted,
                retention_days=days if days is not None else kept_days,
                by=operator(as_name),
                reason=reason,
                job_retention=jobs,
            )
        except IntegrityError:
            raise PolicyRefused(
                "the policy changed while this command ran; run it again"
            ) from None

    document = {
        "redaction": saved.redaction.as_dict(),
        "retention_days": saved.retention_days,
        "job_retention": saved.job_retention,
        "by": saved.set_by,
        "reason": saved.reason,
        "change": saved.changes,
    }
    if as_json:
        print_json(document)
        return
    click.echo(
        f"policy change {saved.changes} recorded by {saved.set_by}: "
        f"{_summary(saved.redaction)}; retention {saved.retention_days} days"
    )


def _job_retention(text: str) -> tuple[str, int]:
    from ledger.policy import PolicyRefused, parse_retention

    job, sep, days = text.partition("=")
    if not sep or not job.strip():
        raise PolicyRefused(
            f"--job-retention {text!r}: write JOB=DAYS, such as billing=365d"
        )
    return job.strip(), parse_retention(days)


def _pattern(text: str) -> tuple[str, str]:
    from ledger.policy import PolicyRefused

    name, sep, regex = text.partition("=")
    if not sep or not name.strip() or not regex:
        raise PolicyRefused(
            f"--redact-pattern {text!r}: write NAME=REGEX, such as "
            "iban='[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}'"
        )
    return name.strip(), regex


def _changed(
    base: Redaction, added: Redaction, switched_off: tuple[str, ...]
) -> Redaction:
    from ledger.redaction import Redaction

    # A pattern given again under its name takes the new regex.
    patterns: dict[str, Any] = dict(base.patterns)
    patterns.update(added.patterns)
    return Redaction(
        fields=base.fields | added.fields,
        paths=base.paths + added.paths,
        patterns=patterns,
        builtins=(base.builtins | added.builtins) - set(switched_off),
    )


def _summary(redaction: Redaction) -> str:
    parts = [f"built-ins {', '.join(sorted(redaction.builtins)) or 'none'}"]
    if redaction.fields:
        parts.append(f"fields {', '.join(sorted(redaction.fields))}")
    if redaction.paths:
        parts.append(f"paths {', '.join(redaction.paths)}")
    if redaction.patterns:
        parts.append(f"patterns {', '.join(name for name, _ in redaction.patterns)}")
    return "; ".join(parts)
