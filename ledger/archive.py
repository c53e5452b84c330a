"""An archive folder: runs that left the live ledger, and their manifest.

Each archived run is one gzip file of JSON Lines, `RUN_ID.jsonl.gz`: one
line per stored event of the run's stream and of the effects it made, in
the order they were stored, with the event's state as the exact text the
store held. Keeping the bytes, not a decoded copy, keeps the hash chains
checkable (see ledger.chain), in the folder and once loaded back.

`manifest.json` lists every file with its sha256, size, event count, the
first and last notification id its events had, and each stream's head
hash. It is rewritten whole (to a temporary file, then renamed) each time
runs are added, so a crash leaves the previous manifest, never half a one.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson

from ledger.chain import ChainCheck
from ledger.errors import LedgerError
from ledger.store import StreamRow
from ledger.verification import stream_kind

__all__ = [
    "MANIFEST",
    "ArchiveDamaged",
    "ArchivedRun",
    "check_archive",
    "read_archive",
    "read_manifest",
    "write_archive",
    "write_manifest",
]

MANIFEST = "manifest.json"
FORMAT = "recovery-ledger archive"
FORMAT_VERSION = 1


class ArchiveDamaged(LedgerError):
    """An archive file does not hold what its manifest says."""

    exit_code = 1


@dataclass(frozen=True)
class ArchivedRun:
    """One manifest entry: a run's file and what it must hold."""

    run_id: str
    job: str
    state: str
    ended_at: str
    file: str
    sha256: str
    bytes: int
    events: int
    first_notification_id: int
    last_notification_id: int
    streams: list[dict[str, Any]]
    archived_at: str
    archived_by: str

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def write_archive(folder: Path, run_id: str, rows: Sequence[StreamRow]) -> Path:
    """Writes the run's events to its file, fsynced, and returns its path."""
    path = folder / f"{run_id}.jsonl.gz"
    partial = path.with_suffix(".gz.partial")
    with partial.open("wb") as raw:
        # mtime=0: the same events always make the same bytes.
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
            for row in rows:
                packed.write(
                    orjson.dumps(
                        {
                            "notification_id": row.notification_id,
                            "stream": str(row.stream),
                            "version": row.version,
                            "topic": row.topic,
                            "state": row.state.decode(),
                        }
                    )
                    + b"\n"
                )
        raw.flush()
        os.fsync(raw.fileno())
    partial.replace(path)
    return path


def read_archive(path: Path) -> list[StreamRow]:
    """The events of one archive file, as they were stored."""
    try:
        with gzip.open(path, "rb") as packed:
            lines = packed.read().splitlines()
        return [_row(orjson.loads(line)) for line in lines if line]
    except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
        raise ArchiveDamaged(f"{path.name} cannot be read: {error}") from error


def _row(item: dict[str, Any]) -> StreamRow:
    return StreamRow(
        int(item["notification_id"]),
        UUID(item["stream"]),
        int(item["version"]),
        str(item["topic"]),
        str(item["state"]).encode(),
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def chain_of(rows: Sequence[StreamRow]) -> ChainCheck:
    check = ChainCheck()
    for row in rows:
        check.add(row.stream, row.version, row.topic, row.state, row.notification_id)
    return check


def streams_of(check: ChainCheck) -> list[dict[str, Any]]:
    """Each stream's kind, event count and head hash, for the manifest."""
    return [
        {
            "stream": str(stream),
            "kind": stream_kind(state.first_topic),
            "events": state.events,
            "head": state.head,
        }
        for stream, state in check.streams.items()
    ]


def check_archive(folder: Path, entry: ArchivedRun) -> list[StreamRow]:
    """Reads one file back and checks it against its manifest entry: the
    sha256, the events, each stream's chain and head. Returns its events;
    raises ArchiveDamaged naming what does not match."""
    path = folder / entry.file
    if not path.is_file():
        raise ArchiveDamaged(f"{entry.file} is missing from {folder}")
    if sha256_of(path) != entry.sha256:
        raise ArchiveDamaged(f"{entry.file}: its sha256 differs from the manifest's")
    rows = read_archive(path)
    if len(rows) != entry.events:
        raise ArchiveDamaged(
            f"{entry.file}: {len(rows)} events, the manifest says {entry.events}"
        )
    check = chain_of(rows)
    if check.breaks:
        found = check.breaks[0]
        raise ArchiveDamaged(
            f"{entry.file}: stream {found.stream}, event {found.version}: "
            f"{found.problem}"
        )
    if streams_of(check) != entry.streams:
        raise ArchiveDamaged(
            f"{entry.file}: its streams' heads differ from the manifest's"
        )
    return rows


def read_manifest(folder: Path) -> list[ArchivedRun]:
    """The folder's manifest entries; none for a folder without one."""
    path = folder / MANIFEST
    if not path.exists():
        return []
    try:
        document = orjson.loads(path.read_bytes())
        if document.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} manifest")
        return [ArchivedRun(**entry) for entry in document["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ArchiveDamaged(
            f"{path} cannot be read ({error}); an archive folder holds the "
            f"manifest `ledger archive` wrote"
        ) from error


def write_manifest(folder: Path, entries: Sequence[ArchivedRun]) -> None:
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "runs": [entry.as_dict() for entry in entries],
    }
    path = folder / MANIFEST
    partial = folder / (MANIFEST + ".partial")
    with partial.open("wb") as out:
        out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)
