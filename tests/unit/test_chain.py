"""Hash chains as properties: any change to a stored event is caught.

Streams of events are chained the way the store chains them, interleaved
the way a log interleaves them, and then damaged: a byte changed, an event
dropped, two events swapped. `ChainCheck` must name the first damaged
event of the damaged stream, and only that stream.
"""

from __future__ import annotations

from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent
from hypothesis import given
from hypothesis import strategies as st

from ledger.chain import GENESIS, ChainCheck, Heads, chain_events, read_link

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_states = st.dictionaries(st.text(min_size=1, max_size=8), _values, max_size=4)


def _stream(stream: UUID, states: list[dict[str, object]]) -> list[StoredEvent]:
    raw = [
        StoredEvent(stream, version, "tests:Event", orjson.dumps(state))
        for version, state in enumerate(states, start=1)
    ]
    chained, _ = chain_events(raw, Heads(), lambda _s, _v: None)
    return chained


def _check(events: list[StoredEvent]) -> ChainCheck:
    check = ChainCheck()
    for event in events:
        check.add(
            event.originator_id, event.originator_version, event.topic, event.state
        )
    return check


streams_of_events = st.lists(
    st.lists(_states, min_size=1, max_size=6), min_size=1, max_size=4
)


@given(streams_of_events, st.randoms())
def test_untouched_streams_hold_in_any_interleaving(
    streams: list[list[dict[str, object]]], rng: object
) -> None:
    ids = [UUID(int=n + 1) for n in range(len(streams))]
    queues = [_stream(i, states) for i, states in zip(ids, streams, strict=True)]

    # A log interleaves streams, each in its own order.
    log: list[StoredEvent] = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])  # type: ignore[attr-defined]
        log.append(queue.pop(0))
    check = _check(log)
    assert check.breaks == []
    assert check.events == sum(len(s) for s in streams)


@given(st.lists(_states, min_size=1, max_size=6), st.data())
def test_a_changed_byte_is_named_where_it_was_made(
    states: list[dict[str, object]], data: st.DataObject
) -> None:
    events = _stream(UUID(int=7), states)
    at = data.draw(st.integers(0, len(events) - 1))
    state = events[at].state
    where = data.draw(st.integers(0, len(state) - 1))
    flipped = data.draw(st.integers(1, 255))
    damaged = bytearray(state)
    damaged[where] ^= flipped
    events[at] = StoredEvent(UUID(int=7), at + 1, "tests:Event", bytes(damaged))

    [found] = _check(events).breaks

    # Damage to the chain keys themselves may show on the next event; never
    # before the damaged one, never later than the one after it.
    assert found.version in (at + 1, at + 2)


@given(st.lists(_states, min_size=3, max_size=6), st.data())
def test_a_dropped_or_swapped_event_is_named(
    states: list[dict[str, object]], data: st.DataObject
) -> None:
    events = _stream(UUID(int=9), states)
    at = data.draw(st.integers(1, len(events) - 2))

    dropped = events[:at] + events[at + 1 :]
    [found] = _check(dropped).breaks
    assert (found.version, found.problem) == (at + 2, f"event {at + 1} is missing")

    # The same states stored in the other order, each hashed at its new place.
    swapped = list(events)
    swapped[at], swapped[at + 1] = events[at + 1], events[at]
    assert _check(swapped).breaks[0].version == at + 2


def test_the_first_event_links_to_genesis_and_unchained_events_break() -> None:
    [first] = _stream(UUID(int=3), [{"a": 1}])
    link = read_link(first.originator_id, 1, first.topic, first.state)
    assert link.prev_hash == GENESIS

    # An event without chain keys proves nothing: stripping every key of a
    # stream must not pass for a stream that never had them. A chained
    # event after one links to what its bytes hash to.
    bare = StoredEvent(UUID(int=4), 1, "tests:Event", b'{"a":1}')
    later, _ = chain_events(
        [StoredEvent(UUID(int=4), 2, "tests:Event", b'{"b":2}')],
        Heads(),
        lambda _s, _v: bare,
    )
    check = _check([bare, *later])
    [found] = check.breaks
    assert (found.version, found.problem) == (
        1,
        "it has no hash keys: they were removed, or it predates them",
    )
    assert check.unchained == 1
