"""Hash chains: every stored event names the hash of the one before it.

Each event of a stream (a run, an effect, an input's index) is stored with
two more keys at the end of its state, written by the store as it saves:

- `prev_hash`: the hash of the stream's previous event (64 zeros for the
  first one);
- `hash`: the SHA-256 of the stream id, the event's version, its topic and
  its stored state up to and including `prev_hash`.

So an event edited in place no longer matches its own `hash`, and one
edited together with its `hash`, removed or replaced no longer matches the
`prev_hash` of the event after it. The check works on the stored bytes as
they are, without decoding them, so it cannot be fooled by a change that
decodes to the same value.

Limitation: a chain proves that no event inside it was changed; it cannot
prove that none was removed from its end, or that a whole stream was not
rewritten with new hashes. That needs the head hash kept somewhere the
database's owner cannot edit: `ledger verify RUN --json` prints it, and an
archive's manifest records it.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

__all__ = [
    "GENESIS",
    "Break",
    "ChainCheck",
    "Heads",
    "Link",
    "StreamId",
    "StreamState",
    "chain_events",
    "chained",
    "event_hash",
    "read_link",
]

# A stream's id as the store hands it over (a UUID in this ledger).
StreamId = UUID | str

# The previous hash of a stream's first event.
GENESIS = "0" * 64

_HEX64 = rb"[0-9a-f]{64}"

# The two keys the store appends, exactly as it writes them.
_HASH_TAIL = re.compile(rb',"hash":"(' + _HEX64 + rb')"\}\Z')
_PREV_TAIL = re.compile(rb'(?<=[,{])"prev_hash":"(' + _HEX64 + rb')"\}\Z')

# Either key near the end of a state whose tail does not parse: an event
# stored with a chain whose keys were damaged, not one stored before chains.
_CHAIN_KEY = re.compile(rb'"(prev_)?hash":')
_TAIL_SPAN = 200


def event_hash(originator_id: StreamId, version: int, topic: str, body: bytes) -> str:
    """The hash of one event: its place in its stream, its type, its state."""
    # A stream id is hashed in its one canonical spelling, dashed, however
    # a driver hands it over.
    stream = originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
    digest = hashlib.sha256()
    digest.update(f"{stream}\n{version}\n{topic}\n".encode())
    digest.update(body)
    return digest.hexdigest()


def _append(state: bytes, key: str, value: str) -> bytes:
    # The state is orjson's compact encoding of an object: `{...}`.
    member = f'"{key}":"{value}"}}'.encode()
    return state[:-1] + (b"," if state != b"{}" else b"") + member


def chained(event: StoredEvent, prev_hash: str) -> tuple[StoredEvent, str]:
    """The event with its chain keys appended, and its hash."""
    body = _append(event.state, "prev_hash", prev_hash)
    digest = event_hash(
        event.originator_id, event.originator_version, event.topic, body
    )
    stored = StoredEvent(
        originator_id=event.originator_id,
        originator_version=event.originator_version,
        topic=event.topic,
        state=_append(body, "hash", digest),
    )
    return stored, digest


@dataclass(frozen=True)
class Link:
    """What one stored event says of its chain, and what it hashes to."""

    # The hash its bytes give now, whatever the event claims.
    actual: str

    # What the event recorded when it was stored; None on an event stored
    # before the ledger kept chains (or one whose chain keys were removed).
    claimed: str | None
    prev_hash: str | None
    damaged: bool = False


def read_link(originator_id: StreamId, version: int, topic: str, state: bytes) -> Link:
    """Reads an event's chain keys off the end of its stored state."""
    tail = _HASH_TAIL.search(state)
    if tail is None:
        return Link(
            actual=event_hash(originator_id, version, topic, state),
            claimed=None,
            prev_hash=None,
            damaged=_CHAIN_KEY.search(state, max(0, len(state) - _TAIL_SPAN))
            is not None,
        )
    body = state[: tail.start()] + b"}"
    prev = _PREV_TAIL.search(body)
    return Link(
        actual=event_hash(originator_id, version, topic, body),
        claimed=tail.group(1).decode(),
        prev_hash=prev.group(1).decode() if prev else None,
    )


@dataclass(frozen=True)
class Break:
    """The first event of a stream that does not match its chain."""

    stream: StreamId
    version: int
    topic: str
    notification_id: int | None
    problem: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": str(self.stream),
            "version": self.version,
            "topic": self.topic,
            "notification_id": self.notification_id,
            "problem": self.problem,
        }


@dataclass
class StreamState:
    """How far a check has followed one stream."""

    events: int = 0
    version: int = 0
    head: str = GENESIS
    first_topic: str = ""
    chained_from: int | None = None
    broken: bool = False


@dataclass
class ChainCheck:
    """Follows stored events, stream by stream, and notes each first break.

    Events must arrive in each stream's version order (the log's order
    does that); streams may be interleaved.
    """

    streams: dict[StreamId, StreamState] = field(default_factory=dict)
    breaks: list[Break] = field(default_factory=list)
    events: int = 0
    unchained: int = 0

    def add(
        self,
        originator_id: StreamId,
        version: int,
        topic: str,
        state: bytes,
        notification_id: int | None = None,
    ) -> None:
        self.events += 1
        stream = self.streams.setdefault(originator_id, StreamState(first_topic=topic))
        stream.events += 1
        link = read_link(originator_id, version, topic, state)
        problem = None if stream.broken else _problem(stream, version, link)
        if problem is not None:
            stream.broken = True
            self.breaks.append(
                Break(originator_id, version, topic, notification_id, problem)
            )

        # The next event is checked against what this one hashes to now.
        if link.claimed is None:
            self.unchained += 1
        elif stream.chained_from is None:
            stream.chained_from = version
        stream.version = version
        stream.head = link.actual


def _problem(stream: StreamState, version: int, link: Link) -> str | None:
    if version != stream.version + 1:
        missing = stream.version + 1
        if version <= stream.version:
            return f"version {version} follows version {stream.version}"
        return (
            f"event {missing} is missing"
            if version == missing + 1
            else f"events {missing} to {version - 1} are missing"
        )
    if link.damaged:
        return "its hash keys were damaged"
    if link.claimed is None:
        # Every event this ledger stored was chained: one without keys was
        # stripped of them, or stored by a build that did not chain yet,
        # and proves nothing either way.
        if stream.chained_from is not None:
            return "its hash keys were removed"
        return "it has no hash keys: they were removed, or it predates them"
    if link.claimed != link.actual:
        return "its content was changed after it was recorded"
    if link.prev_hash is None:
        return "its previous hash was removed"
    expected = stream.head if version > 1 else GENESIS
    if link.prev_hash != expected:
        return (
            "the event before it was changed, replaced or removed"
            if version > 1
            else "it claims a predecessor, but it is the first event"
        )
    return None


class Heads:
    """The last hash of recently saved streams, so a save need not read it.

    An entry is put only once its save committed, and is used only for the
    very next version, so a save refused by the store (another writer took
    the version) never leaves a wrong head behind.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._entries: OrderedDict[StreamId, tuple[int, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, stream: StreamId, version: int) -> str | None:
        with self._lock:
            entry = self._entries.get(stream)
        if entry is not None and entry[0] == version:
            return entry[1]
        return None

    def put(self, heads: dict[StreamId, tuple[int, str]]) -> None:
        with self._lock:
            for stream, entry in heads.items():
                self._entries[stream] = entry
                self._entries.move_to_end(stream)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


def chain_events(
    events: Iterable[StoredEvent],
    heads: Heads,
    read_event: Callable[[StreamId, int], StoredEvent | None],
) -> tuple[list[StoredEvent], dict[StreamId, tuple[int, str]]]:
    """The events of one save with their chain keys, and the new heads.

    `read_event(stream, version)` reads a stored event, for a stream whose
    head this process has not seen saved.
    """
    new_heads: dict[StreamId, tuple[int, str]] = {}
    result = []
    for event in events:
        stream, version = event.originator_id, event.originator_version
        prev = _prev_hash(stream, version, new_heads, heads, read_event)
        stored, digest = chained(event, prev)
        new_heads[stream] = (version, digest)
        result.append(stored)
    return result, new_heads


def _prev_hash(
    stream: StreamId,
    version: int,
    new_heads: dict[StreamId, tuple[int, str]],
    heads: Heads,
    read_event: Callable[[StreamId, int], StoredEvent | None],
) -> str:
    if version == 1:
        return GENESIS

    # An earlier event of the same save, then a recent save, then the store.
    pending = new_heads.get(stream)
    if pending is not None and pending[0] == version - 1:
        return pending[1]
    known = heads.get(stream, version - 1)
    if known is not None:
        return known
    before = read_event(stream, version - 1)
    if before is None:
        # Only a stream continued after its earlier events were archived
        # lacks them; `verify` names the missing events.
        return GENESIS
    return read_link(stream, version - 1, before.topic, before.state).actual
