"""What the consumer has fetched and not yet handled, per partition.

aiokafka hands out one partition's buffered records first, which would
leave the other partitions waiting while the first has any: batches are
taken from every partition in turn instead. The buffer also remembers the
next offset it expects of each partition it positioned, and drops records
before it: aiokafka may hand out records fetched before the assignment
callback sought the partition to the ledger's position, and those must
never be handled.
"""

from __future__ import annotations

import collections
from typing import Any

from consumers.job import Message
from ledger.messages import partition_key

__all__ = ["FetchBuffer"]


class FetchBuffer:
    """Fetched messages, per partition, in offset order."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}
        self._queues: dict[str, collections.deque[Message]] = {}
        self._turn = 0

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def holds(self, key: str) -> bool:
        return bool(self._queues.get(key))

    def expect(self, key: str, offset: int) -> None:
        """The partition was sought to `offset`: anything buffered is stale."""
        self._next[key] = offset
        self._queues.pop(key, None)

    def read_past(self, key: str, offset: int) -> None:
        """The client's position moved past a gap in the log."""
        self._next[key] = max(self._next.get(key, 0), offset)

    def drop(self, key: str) -> None:
        """The partition is no longer this consumer's."""
        self._next.pop(key, None)
        self._queues.pop(key, None)

    def accept(self, fetched: dict[Any, list[Any]]) -> None:
        """Buffers aiokafka's records (by TopicPartition) of the partitions
        this consumer positioned, from the offset it expects on."""
        for tp, records in fetched.items():
            key = partition_key(tp.topic, tp.partition)
            expected = self._next.get(key)
            if expected is None:
                continue
            messages = [
                Message(
                    topic=r.topic,
                    partition=r.partition,
                    offset=r.offset,
                    key=r.key,
                    value=r.value,
                    headers=tuple(r.headers or ()),
                    timestamp=r.timestamp,
                )
                for r in records
                if r.offset >= expected
            ]
            if messages:
                self._queues.setdefault(key, collections.deque()).extend(messages)
                self._next[key] = messages[-1].offset + 1

    def take(self, limit: int) -> dict[str, list[Message]]:
        """Up to `limit` messages, taken from every partition in turn; each
        call starts one partition further on, so that batches smaller than
        the number of partitions still reach them all."""
        batch: dict[str, list[Message]] = {}
        keys = sorted(self._queues)
        if not keys:
            return batch
        start = self._turn % len(keys)
        self._turn += 1
        order = keys[start:] + keys[:start]
        taken = 0
        while taken < limit and len(self):
            for key in order:
                queue = self._queues[key]
                if queue and taken < limit:
                    batch.setdefault(key, []).append(queue.popleft())
                    taken += 1
        return batch
