"""Recovery in words: checkpoints, resume points and the one-sentence story.

A person at 3 a.m. should read one sentence and know what failed, where
the run will resume, what is already done, what is quarantined, and the
one command that recovers it.
"""

from __future__ import annotations

import shlex
from typing import Any

from projections.views import AttemptView, RunView

__all__ = [
    "consume_command",
    "describe_checkpoint",
    "describe_partitions",
    "describe_resume",
    "explain",
    "short_id",
    "start_over_command",
]

# The quarantine reason of a record held for an uncertain effect
# (`ledger.effects.EffectUncertain`): it waits for `ledger effects`, not
# for a promotion.
UNCERTAIN_EFFECT = "effect-uncertain"


def short_id(run_id: str) -> str:
    return run_id[:8]


def _position(kind: str | None, position: int | None) -> str:
    if position is None:
        return ""
    return f", {kind or 'position'} {position:,}"


def describe_checkpoint(checkpoint: dict[str, Any] | None) -> str:
    """'step enrich, batch 40, rows 200,001–205,000, row 205,000'."""
    if checkpoint is None:
        return "none yet"
    return (
        f"step {checkpoint['step']}, batch {checkpoint['batch']}, "
        f"rows {checkpoint['first_record']:,}–{checkpoint['last_record']:,}"
        f"{_position(checkpoint.get('position_kind'), checkpoint['position'])}"
    )


def describe_resume(point: dict[str, Any] | None) -> str:
    """'step enrich, batch 41, from row 205,001 (source position: row 205,000)'."""
    if point is None:
        return "nothing left to do"
    if point["from_record"] <= 1 and not point["position"]:
        return f"step {point['step']}, batch {point['batch']}, from the start"
    return (
        f"step {point['step']}, batch {point['batch']}, from row "
        f"{point['from_record']:,} "
        f"(source position: {point.get('position_kind') or 'position'} "
        f"{point['position']:,})"
    )


def _done(run: RunView) -> str:
    completed = [s.step for s in run.steps if s.state == "completed"]
    total = len(run.steps)
    parts = [f"{len(completed)} of {total} steps done"]
    if completed:
        parts[0] += f" ({', '.join(completed)})"
    point = run.resume_point
    if point is not None and point["batch"]:
        batches = "1 batch" if point["batch"] == 1 else f"{point['batch']} batches"
        parts.append(f"{batches} of {point['step']} checkpointed")
    return " and ".join(parts)


def _quarantine(run: RunView) -> str:
    # Quarantined means still waiting for a decision; discarded records
    # are settled, and said apart.
    if not run.quarantined:
        if run.discarded:
            return f"no records left in quarantine ({run.discarded:,} discarded)"
        return "nothing quarantined"
    reasons = ", ".join(f"{n:,} {r}" for r, n in run.quarantined_by_reason.items())
    discarded = f" and {run.discarded:,} discarded" if run.discarded else ""
    return f"{_records(run.quarantined)} quarantined ({reasons}){discarded}"


def _records(count: int) -> str:
    return "1 record" if count == 1 else f"{count:,} records"


def _written(run: RunView) -> str:
    if not run.steps:
        return ""
    last = run.steps[-1]
    return f", {_records(last.written)} written by {last.step}"


def describe_partitions(consumer: dict[str, Any]) -> str:
    """'flights[0] at 16,667 (lag 0), flights[1] at 16,600 (Kafka behind)'."""
    parts = []
    for item in consumer["partitions"]:
        notes = []
        if item["lag"] is not None:
            notes.append(f"lag {item['lag']:,}")
        divergence = item["divergence"]
        if divergence in ("behind", "ahead"):
            notes.append(f"Kafka was {divergence} on assignment")
        elif divergence == "truncated":
            notes.append("messages were deleted before they were read")
        elif divergence == "past-end":
            notes.append("the log ends before this position")
        if item["state"] != "assigned":
            notes.append(item["state"])
        note = f" ({', '.join(notes)})" if notes else ""
        parts.append(f"{item['partition']} at {item['position']:,}{note}")
    return ", ".join(parts) if parts else "no partitions assigned yet"


def consume_command(run: RunView) -> str:
    assert run.consumer is not None
    command = f"ledger consume {shlex.quote(run.job_ref)}"
    bootstrap = run.params.get("bootstrap_servers")
    if bootstrap:
        command += f" --bootstrap-servers {shlex.quote(str(bootstrap))}"
    return f"{command} --member {shlex.quote(run.consumer['member'])}"


def _quarantine_decision(run: RunView) -> str:
    """The one decision pending quarantined records wait for."""
    short = short_id(run.run_id)
    uncertain = run.quarantined_by_reason.get(UNCERTAIN_EFFECT, 0)
    others = run.quarantined - uncertain
    decisions = ""
    if others:
        one = others == 1
        waiting = "its quarantined record waits" if one else (
            f"the {others:,} quarantined records wait"
        )  # fmt: skip
        them = "it" if one else "them"
        decisions += (
            f"; {waiting} for one decision: once the cause is fixed, `ledger "
            f"quarantine promote --all --run {short}` puts {them} back through "
            f"the job, or `ledger quarantine discard --all --run {short} --reason "
            f"TEXT` sets {them} aside (`ledger quarantine list --run {short}` "
            f"shows {them})"
        )
    # Effects held without a record in quarantine (a handler that caught
    # EffectUncertain and went on, an effect made in `write`).
    unheld = max(0, run.effects_uncertain - uncertain)
    if unheld:
        many = "s" if unheld > 1 else ""
        decisions += (
            f"; {unheld:,} uncertain effect{many} wait{'' if many else 's'} for "
            "a decision (its downstream may or may not have applied it): check "
            "the downstream, then `ledger effects confirm KEY --reason TEXT` or "
            f"`ledger effects retry KEY --reason TEXT`; `ledger effects {short} "
            "--state uncertain` lists them"
        )
    if uncertain:
        many = "s" if uncertain > 1 else ""
        decisions += (
            f"; {uncertain:,} record{many} wait{'' if many else 's'} for a "
            f"decision on an uncertain effect (its downstream may or may not "
            "have applied it, and would apply a repeat): check the downstream, "
            "then `ledger effects confirm KEY --reason TEXT` (it happened) or "
            f"`ledger effects retry KEY --reason TEXT` (it did not); `ledger "
            f"effects {short} --state uncertain` lists them"
        )
    return decisions


def _last_abandon(run: RunView) -> dict[str, Any]:
    decisions = [a for a in run.actions if a["action"] == "abandon"]
    return decisions[-1] if decisions else {}


def _pause_note(run: RunView) -> str:
    """A pause asked of a worker that has not reached a boundary yet."""
    if run.paused is None:
        return ""
    return (
        f"; a pause asked by {run.paused['by']} ({_clip(run.paused['reason'])}) "
        "takes effect at its next batch boundary"
    )


def _explain_paused(run: RunView, name: str, done: str, resume: str) -> str:
    decision = run.paused or {}
    short = short_id(run.run_id)
    by = f"{decision.get('by', 'an operator')} ({_clip(decision.get('reason'))})"
    if run.worker_alive:
        return (
            f"{name} is paused by {by} on attempt {run.attempts}: its worker "
            f"({run.worker_evidence}) waits at {resume}; {done}; `ledger resume "
            f"{short}` lets it go on."
        )
    return (
        f"{name} is paused by {by}; no worker is waiting; {done}; `ledger "
        f"resume {short}` lifts the pause and goes on from {resume}."
    )


def _explain_consumer(run: RunView, attempts: list[AttemptView]) -> str:
    consumer = run.consumer
    assert consumer is not None
    name = (
        f"Consumer run {short_id(run.run_id)} of {run.job} (group "
        f"{consumer['group']}, member {consumer['member']})"
    )
    handled = run.steps[0].records if run.steps else 0
    done = f"{handled:,} messages handled in {run.batches_done:,} batches"
    where = f"partitions: {describe_partitions(consumer)}"
    quarantined = _quarantine(run).replace("record", "message")
    superseded = ""
    if consumer["superseded"]:
        superseded = (
            f"; {consumer['superseded']} partition checkpoints were refused "
            "because another consumer had recorded them first (see `ledger "
            f"history {short_id(run.run_id)}`)"
        )
    command = f"`{consume_command(run)}`"

    if run.state == "stopped":
        return (
            f"{name} stopped cleanly on attempt {run.attempts} after {done}; "
            f"{where}; {quarantined}{superseded}; nothing to recover: {command} "
            "goes on from these positions."
        )
    if run.state == "paused":
        return _explain_paused(
            run, name, f"{done}; {quarantined}{superseded}", f"{where}"
        ).replace("lifts the pause and goes on", f"lifts the pause, then {command}")
    if run.state == "running":
        return (
            f"{name} is consuming on attempt {run.attempts} "
            f"({run.worker_evidence}); {done}; {where}; {quarantined}"
            f"{superseded}{_pause_note(run)}; nothing to do while it runs."
        )
    if run.state == "failed" and run.failure is not None:
        failure = run.failure
        return (
            f"{name} failed on attempt {run.attempts} with "
            f"{failure['error_class']}: {_clip(failure['error_message'])}; {done}; "
            f"{where}; {quarantined}{superseded}; fix the cause, then recover "
            f"with {command}."
        )
    if run.state == "abandoned":
        decision = _last_abandon(run)
        return (
            f"{name} was abandoned on attempt {run.attempts} by "
            f"{decision.get('by', 'an operator')} ({_clip(decision.get('reason'))}); "
            f"{done}; {where}; {quarantined}{superseded}; a new process of the "
            f"member resumes from these positions: {command}."
        )
    last = attempts[-1] if attempts else None
    evidence = run.worker_evidence or (
        last.error_message if last and last.error_message else "worker lost"
    )
    return (
        f"{name} stopped on attempt {run.attempts} without recording an outcome "
        f"({evidence}); the batch it was handling will be handled again, one "
        f"message at a time; {done}; {where}; {quarantined}{superseded}; "
        f"recover with {command}."
    )


def explain(run: RunView, attempts: list[AttemptView]) -> str:
    """One sentence: what happened, where it resumes, and what to run."""
    if run.consumer is not None:
        return _explain_consumer(run, attempts)
    name = f"Run {short_id(run.run_id)} of {run.job}"
    resume = describe_resume(run.resume_point)
    recover = f"`ledger resume {short_id(run.run_id)}`"
    last = attempts[-1] if attempts else None

    if run.state == "completed":
        return (
            f"{name} completed on attempt {run.attempts}: all {len(run.steps)} "
            f"steps done{_written(run)}, {_quarantine(run)}; nothing to "
            f"recover{_quarantine_decision(run)}."
        )

    if run.state == "failed" and run.failure is not None:
        failure = run.failure
        if failure["error_class"] == "TooManyRejected":
            recover = f"`ledger resume {short_id(run.run_id)} --max-quarantine-ratio 1`"
            return (
                f"{name} stopped on attempt {run.attempts} in step "
                f"{failure['step']}, batch {failure['batch']}, because the batch "
                f"rejected too many records ({_clip(failure['error_message'])}); "
                f"{_done(run)}, {_quarantine(run)}; check the input is the file "
                f"you meant; if those records really are bad, quarantine them "
                f"and go on from {resume} with {recover}."
            )
        where = f"in step {failure['step']}" if failure["step"] else "before any step"
        if failure["batch"] is not None:
            where += f", batch {failure['batch']}"
        if failure["error_class"] == "OutputLost":
            return (
                f"{name} cannot resume: {_clip(failure['error_message'], 200)}; "
                f"{_done(run)}; restore that output and run {recover}, or start "
                f"over with `{start_over_command(run)}`."
            )
        if failure["error_class"] == "Interrupted":
            return (
                f"{name} was interrupted on attempt {run.attempts} {where} "
                f"({failure['error_message']}); {_done(run)}, {_quarantine(run)}; "
                f"it will resume at {resume}; recover with {recover}."
            )
        return (
            f"{name} failed on attempt {run.attempts} {where} with "
            f"{failure['error_class']}: {_clip(failure['error_message'])}; "
            f"{_done(run)}, {_quarantine(run)}; it will resume at {resume}; "
            f"fix the cause, then recover with {recover}."
        )

    if run.state == "abandoned":
        decision = _last_abandon(run)
        return (
            f"{name} was abandoned on attempt {run.attempts} by "
            f"{decision.get('by', 'an operator')} ({_clip(decision.get('reason'))}); "
            f"last good checkpoint: {describe_checkpoint(run.last_checkpoint)}; "
            f"{_done(run)}, {_quarantine(run)}; a new worker resumes it at "
            f"{resume}: recover with {recover}."
        )

    if run.state == "paused":
        return _explain_paused(
            run,
            name,
            f"last good checkpoint: {describe_checkpoint(run.last_checkpoint)}; "
            f"{_done(run)}, {_quarantine(run)}",
            resume,
        )

    if run.state == "rewound":
        decision = ([a for a in run.actions if a["action"] == "rerun"] or [{}])[-1]
        return (
            f"{name} was rewound by {decision.get('by', 'an operator')} "
            f"({_clip(decision.get('reason'))}); last good checkpoint: "
            f"{describe_checkpoint(run.last_checkpoint)}; {_done(run)}, "
            f"{_quarantine(run)}; the next attempt redoes the work from {resume}: "
            f"start it with {recover}."
        )

    if run.state == "abandoned-by-worker":
        return (
            f"{name} was abandoned by its worker on attempt {run.attempts} "
            f"({run.worker_evidence}: it stopped renewing its lease, a lost node "
            "or a frozen process); last good checkpoint: "
            f"{describe_checkpoint(run.last_checkpoint)}; {_done(run)}, "
            f"{_quarantine(run)}; another worker may take it over and resume at "
            f"{resume}: recover with {recover}."
        )

    if run.state in ("interrupted", "crashed"):
        evidence = run.worker_evidence or (
            last.error_message if last and last.error_message else "worker lost"
        )
        return (
            f"{name} stopped on attempt {run.attempts} without recording an "
            f"outcome ({evidence}); last good checkpoint: "
            f"{describe_checkpoint(run.last_checkpoint)}; {_done(run)}, "
            f"{_quarantine(run)}; it will resume at {resume}; recover with "
            f"{recover}."
        )

    if run.state == "running":
        where = f"step {run.current_step}" if run.current_step else "its first step"
        if run.current_batch is not None:
            where += f", batch {run.current_batch}"
        return (
            f"{name} is running attempt {run.attempts} ({run.worker_evidence}) in "
            f"{where}; last good checkpoint: "
            f"{describe_checkpoint(run.last_checkpoint)}; {_done(run)}, "
            f"{_quarantine(run)}{_pause_note(run)}; nothing to do while it runs."
        )

    return (
        f"{name} was started but no attempt has begun; it will start at {resume}; "
        f"start it with {recover}."
    )


def start_over_command(run: RunView) -> str:
    """The one command that starts a fresh run of the same job, input and
    parameters (the runtime's own parameters included)."""
    parts = ["ledger run", shlex.quote(run.job_ref)]
    parts += ["--input", shlex.quote(str(run.input["path"]))]
    for name, value in sorted(run.params.items()):
        if name == "batch_size":
            parts += ["--batch-size", str(value)]
        elif value not in ("", None):
            parts += ["--param", shlex.quote(f"{name}={value}")]
    parts.append("--new-run")
    return " ".join(parts)


def _clip(text: str | None, limit: int = 240) -> str:
    text = (text or "").replace("\n", " ").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
