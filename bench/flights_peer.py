"""The peer of `ledger run examples/flights.py`: the same steps, no ledger.

It imports the flights job's own code from its path and drives its three
steps (extract, enrich, load) with a plain loop: read every record of a
step, handle it, drop the ones the step rejects, and write in batches of
5,000 records read, as the runtime groups them. No run, no attempts, no
checkpoints, no quarantine: whatever the ledger run costs beyond this is
the price of being restartable.

The input is named by its sha256 as `ledger run` names it (the load step
keys rows by it), and staged rows are deleted at the end as the job's
`close` does after a completed run, so both sides do the same work.

`--single-pass` is a second, stronger peer: what someone would write with
no thought of restarting at all. Each batch goes through extract, enrich
and load at once, with the same steps' `handle` and the load step's
`write`, and nothing is staged in between. The gap between the two peers
is what the job's own restartable design (staging between steps) costs,
apart from the ledger.

Usage: python bench/flights_peer.py OUTPUT.sqlite [--single-pass]

Prints one JSON object: rows read, written and rejected per step, and the
seconds the loop took inside the process.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
from measure import load_flights_module

from ledger import Record, Reject

__all__ = ["run_plain"]

BATCH_SIZE = 5000


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _drive(step: Any) -> dict[str, int]:
    """Every record of one step, handled and written batch by batch."""
    counters: Counter[str] = Counter()
    read = written = rejected = 0
    records = step.read(None)
    while chunk := list(itertools.islice(records, BATCH_SIZE)):
        outputs = []
        for record in chunk:
            try:
                outputs.append((record, step.handle(record, counters)))
            except Reject:
                rejected += 1
        written += step.write(outputs)
        read += len(chunk)
    return {"read": read, "written": written, "rejected": rejected, **counters}


def _single_pass(steps: list[Any]) -> dict[str, int]:
    """Each batch through all three steps at once; only flights are written."""
    extract, enrich, load = steps
    counters: Counter[str] = Counter()
    read = written = rejected = 0
    records = extract.read(None)
    while chunk := list(itertools.islice(records, BATCH_SIZE)):
        outputs = []
        for record in chunk:
            try:
                row = extract.handle(record, counters)
                row = enrich.handle(Record(record.number, record.number, row), counters)
                row = load.handle(Record(record.number, record.number, row), counters)
            except Reject:
                rejected += 1
                continue
            outputs.append((record, row))
        written += load.write(outputs)
        read += len(chunk)
    return {"read": read, "written": written, "rejected": rejected, **counters}


def run_plain(output_path: Path, *, single_pass: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    flights = load_flights_module()
    folder = flights.data_folder()
    source = folder / "flights.csv.zip"
    run_id = str(uuid4())

    # The job's own objects, built as its `open` builds them.
    output = flights.Output(output_path)
    steps = [
        flights.Extract(source, output, run_id),
        flights.Enrich(flights.load_planes(folder / "planes.csv"), output, run_id),
        flights.Load(output, run_id, _sha256(source)),
    ]
    if single_pass:
        done = {"single_pass": _single_pass(steps)}
    else:
        done = {step.name: _drive(step) for step in steps}

    # What the job's `close` does once a run completed.
    output.drop_staged(run_id)
    output.db.close()
    return {"steps": done, "seconds": round(time.perf_counter() - started, 3)}


def main() -> None:
    paths = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
    if len(paths) != 1:
        sys.exit("usage: python bench/flights_peer.py OUTPUT.sqlite [--single-pass]")
    result = run_plain(Path(paths[0]), single_pass="--single-pass" in sys.argv)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
