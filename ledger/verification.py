"""Checking the hash chains of what the store holds (see ledger.chain).

The whole ledger is read in the log's order, a page at a time, so memory
grows with the number of streams, not of events. One run is read as its
own stream, with the streams of the effects it made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ledger.chain import Break, ChainCheck, StreamId
from ledger.store import Ledger

__all__ = [
    "StreamReport",
    "Verification",
    "stream_kind",
    "verify_ledger",
    "verify_streams",
]

# Events read per query while following the whole log.
_PAGE = 2_000

# What a stream is, by the topic of its first event.
_KINDS = {
    "ledger.run:Run.Started": "run",
    "ledger.effect:Effect.Intended": "effect",
    "ledger.input_runs:InputRuns.Indexed": "input index",
}


@dataclass(frozen=True)
class StreamReport:
    """One stream: what it is, how long, and the hash it ends with."""

    stream: StreamId
    kind: str
    events: int
    head: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": str(self.stream),
            "kind": self.kind,
            "events": self.events,
            "head": self.head,
        }


@dataclass(frozen=True)
class Verification:
    """The outcome: how much was checked, and each stream's first break."""

    events: int
    streams: int
    unchained: int
    breaks: list[tuple[str, Break]]
    heads: list[StreamReport]

    @property
    def intact(self) -> bool:
        return not self.breaks

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "events": self.events,
            "streams": self.streams,
            "unchained_events": self.unchained,
            "breaks": [
                {"kind": kind, **found.as_dict()} for kind, found in self.breaks
            ],
            "streams_checked": [head.as_dict() for head in self.heads],
        }


def verify_ledger(ledger: Ledger) -> Verification:
    """Checks every stream of the ledger."""
    check = ChainCheck()
    recorder = ledger.recorder
    start = 1
    while True:
        page = recorder.select_notifications(start, _PAGE)
        for item in page:
            check.add(
                item.originator_id,
                item.originator_version,
                item.topic,
                bytes(item.state),
                item.id,
            )
        if len(page) < _PAGE:
            break
        start = page[-1].id + 1

    # A whole ledger lists no heads: there may be a great many streams.
    return _outcome(check, heads=False)


def verify_streams(ledger: Ledger, streams: Iterable[UUID]) -> Verification:
    """Checks the given streams, each read whole in version order."""
    check = ChainCheck()
    for stream in streams:
        for event in ledger.recorder.select_events(stream):
            check.add(
                event.originator_id,
                event.originator_version,
                event.topic,
                bytes(event.state),
            )
    return _outcome(check, heads=True)


def _outcome(check: ChainCheck, *, heads: bool) -> Verification:
    streams = check.streams
    return Verification(
        events=check.events,
        streams=len(streams),
        unchained=check.unchained,
        breaks=[
            (stream_kind(streams[found.stream].first_topic), found)
            for found in check.breaks
        ],
        heads=[
            StreamReport(
                stream, stream_kind(state.first_topic), state.events, state.head
            )
            for stream, state in streams.items()
        ]
        if heads
        else [],
    )


def stream_kind(topic: str) -> str:
    """What a stream is (run, effect, ...), by the topic of its first event."""
    return _KINDS.get(topic, topic.partition(":")[2] or topic)
