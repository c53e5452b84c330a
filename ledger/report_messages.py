"""A consumer run's own events in words: partitions and message batches.

A consumer resumes per partition, so its story says which partitions it
was given and gave up, each batch's next offsets, the messages it set
aside, and the checkpoints another consumer got to first.
"""

from __future__ import annotations

from typing import Any

from ledger.report_story import Story, Teller, Told
from ledger.report_words import recorded

__all__ = ["MESSAGE_TELLERS"]


def _partitions(items: list[dict[str, Any]], key: str) -> str:
    return ", ".join(f"{item['partition']} at {item[key]:,}" for item in items)


def _assigned(e: Any, story: Story, run: Any) -> Told:
    for item in e.partitions:
        story.consumed.setdefault(item["partition"], {"from": item["start"]})
        story.consumed[item["partition"]]["to"] = item["start"]
    words = ("partitions assigned: ", recorded(_partitions(e.partitions, "start")))
    return Told("consumer", words, e.attempt)


def _revoked(e: Any, story: Story, run: Any) -> Told:
    names = ", ".join(str(item["partition"]) for item in e.partitions)
    return Told("consumer", ("partitions revoked: ", recorded(names)), e.attempt)


def _messages_started(e: Any, story: Story, run: Any) -> None:
    story.in_flight = {"batch": e.batch}


def _messages_checkpointed(e: Any, story: Story, run: Any) -> Told:
    story.in_flight = None
    for item in e.ranges:
        story.consumed.setdefault(item["partition"], {"from": item["first"]})
        story.consumed[item["partition"]]["to"] = item["next"]
    words = (
        f"checkpoint: batch {e.batch}, messages {e.first_message:,}–"
        f"{e.last_message:,}, {e.written:,} written, {e.quarantined:,} "
        "quarantined; next offsets ",
        recorded(_partitions(e.ranges, "next")),
    )
    return Told("checkpoint", words, e.attempt)


def _message_quarantined(e: Any, story: Story, run: Any) -> Told:
    words = (
        "message ",
        recorded(f"{e.topic}[{e.partition}]@{e.offset}"),
        " quarantined as ",
        recorded(e.reason),
        ": ",
        recorded(f"{e.error_class}: {e.detail}"),
        f" (after {e.tries} tries, id ",
        recorded(e.quarantine_id[:8]),
        ")",
    )
    return Told("quarantine", words, e.attempt, target=e.quarantine_id)


def _superseded(e: Any, story: Story, run: Any) -> Told:
    refused = ", ".join(
        f"{item['partition']} tried {item['next']:,}, recorded {item['recorded']:,}"
        for item in e.partitions
    )
    words = (
        f"checkpoint of batch {e.batch} refused: another consumer got there first (",
        recorded(refused),
        ")",
    )
    return Told("consumer", words, e.attempt)


MESSAGE_TELLERS: dict[str, Teller] = {
    "PartitionsAssigned": _assigned,
    "PartitionsRevoked": _revoked,
    "MessagesStarted": _messages_started,
    "MessagesCheckpointed": _messages_checkpointed,
    "MessageQuarantined": _message_quarantined,
    "MessagesSuperseded": _superseded,
}
