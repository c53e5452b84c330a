"""A text file's lines as a step's records, for jobs that read one.

Record N is line N (counted from 1), and its position is N: reading after
a checkpoint at position N yields line N + 1 onwards, so a resumed step
reads none of the lines it has already checkpointed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ledger.checkpoint import Checkpoint
from ledger.job import Record

__all__ = ["read_lines"]


def read_lines(path: Path, after: Checkpoint | None) -> Iterator[Record]:
    """The file's lines after the checkpoint, one record each."""
    start = after.position if after else 0
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines[start:], start=start + 1):
        yield Record(number=number, position=number, data=line)
