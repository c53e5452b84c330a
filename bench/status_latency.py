"""Benchmark: `ledger status` on a ledger of a million events, next to a scan.

The requirement: `ledger status` answers in under one second on a ledger
holding 1,000,000 events. The peer is what an operator does without read
tables: read the whole log and keep each job's last checkpoint
(bench/status_peer.py). Both are run as fresh processes, in the same
rounds, on the same file, and reported as median and p95 wall time and as
the ratio peer/ledger.

Interpreter start (`python -c pass`) and the CLI's own start
(`ledger --help`) are measured in the same rounds, so a reader sees how
much of `status` is start-up rather than answering.

Usage: python bench/status_latency.py [--events N] [--runs N] [--warmups N]

The million-event ledger is made once and kept in bench/.cache/; each
benchmark run projects a fresh copy of it, so the catch-up is measured
every time and the cached file never changes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from measure import (
    BENCH,
    CACHE,
    environment,
    ledger_command,
    ratio,
    summarize,
    time_command,
    write_results,
)
from status_ledger import build_ledger

STATUS_JOB = "flights-import"


def _project(ledger: str, url: str) -> dict[str, Any]:
    """Brings the read tables up to date once: the whole log, first time."""
    seconds, _, out = time_command([ledger, "--ledger-url", url, "project"])
    match = re.search(r"projected ([\d,]+) events", out)
    if match is None:
        raise RuntimeError(f"unexpected output of `ledger project`: {out!r}")
    events = int(match.group(1).replace(",", ""))
    return {
        "events": events,
        "wall_s": round(seconds, 2),
        "events_per_s": round(events / seconds),
    }


def _commands(ledger: str, url: str, path: Path) -> dict[str, list[str]]:
    peer = [sys.executable, str(BENCH / "status_peer.py"), str(path)]
    return {
        "ledger status": [ledger, "--ledger-url", url, "status"],
        "ledger status --json": [ledger, "--ledger-url", url, "status", "--json"],
        f"ledger status {STATUS_JOB}": [
            ledger,
            "--ledger-url",
            url,
            "status",
            STATUS_JOB,
        ],
        "peer: scan the log": peer,
        "peer: scan, filter in SQL": [*peer, "--filter-in-sql"],
        "python -c pass": [sys.executable, "-c", "pass"],
        "ledger --help": [ledger, "--help"],
    }


def _agree(commands: dict[str, list[str]]) -> dict[str, Any]:
    """Whether the ledger and the peer name the same last checkpoints."""
    shown = time_command(commands["ledger status --json"]).stdout
    ledger_view = {
        run["job"]: {
            name: run["last_checkpoint"][name]
            for name in ("step", "batch", "first_record", "last_record", "position")
        }
        for run in orjson.loads(shown)
        if run["last_checkpoint"] is not None
    }
    scanned = time_command(commands["peer: scan the log"]).stdout
    peer_view = orjson.loads(scanned)
    return {
        "agree": ledger_view == peer_view,
        "ledger": ledger_view,
        "peer": peer_view,
        "states": {run["job"]: run["state"] for run in orjson.loads(shown)},
    }


def _measure(
    commands: dict[str, list[str]], runs: int, warmups: int
) -> dict[str, list[float]]:
    """Every command once a round; the order rotates so none always goes first."""
    names = list(commands)
    for _ in range(warmups):
        for name in names:
            time_command(commands[name])

    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(runs):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(time_command(commands[name]).wall_s)
    return samples


def _table(results: dict[str, Any]) -> str:
    lines = [f"{'command':<34} {'median':>9} {'p95':>9}"]
    for name, stats in results["timings"].items():
        lines.append(f"{name:<34} {stats['median_s']:>8.3f}s {stats['p95_s']:>8.3f}s")
    lines.append("")
    for name, value in results["ratios"].items():
        lines.append(f"{name:<60} {value:>6.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmups", type=int, default=2)
    args = parser.parse_args()
    ledger = ledger_command()

    # The ledger: made once, then reused while the generator is unchanged.
    cached = CACHE / f"status-ledger-{args.events}.sqlite"
    built = build_ledger(cached, args.events)
    how = "reused, made" if built.reused else "generated"
    print(
        f"ledger: {built.events:,} events in {built.runs:,} runs "
        f"({how} in {built.seconds:.1f} s, {built.events / built.seconds:,.0f}/s)"
    )

    with tempfile.TemporaryDirectory(prefix="bench-status-") as folder:
        # A copy, so the read tables are built from nothing on every run.
        work = Path(folder) / "ledger.sqlite"
        shutil.copyfile(cached, work)
        url = f"sqlite:///{work}"
        catch_up = _project(ledger, url)
        print(
            f"catch-up: {catch_up['events']:,} events in {catch_up['wall_s']:.1f} s "
            f"({catch_up['events_per_s']:,}/s)"
        )

        commands = _commands(ledger, url, work)
        check = _agree(commands)
        print(f"ledger and peer name the same last checkpoints: {check['agree']}")

        started = time.perf_counter()
        samples = _measure(commands, args.runs, args.warmups)
        measuring = time.perf_counter() - started
        file_bytes = work.stat().st_size

    timings = {name: summarize(values) for name, values in samples.items()}
    med = {name: stats["median_s"] for name, stats in timings.items()}
    p95 = {name: stats["p95_s"] for name, stats in timings.items()}
    results = {
        "benchmark": "status_latency",
        "environment": environment(),
        "ledger": {**built.as_dict(), "file_bytes_after_projection": file_bytes},
        "catch_up": catch_up,
        "cross_check": check,
        "runs": args.runs,
        "warmups": args.warmups,
        "measuring_seconds": round(measuring, 1),
        "timings": timings,
        "ratios": {
            "peer/ledger status, median": ratio(
                med["peer: scan the log"], med["ledger status"]
            ),
            "peer/ledger status, p95": ratio(
                p95["peer: scan the log"], p95["ledger status"]
            ),
            "peer/ledger status --json, median": ratio(
                med["peer: scan the log"], med["ledger status --json"]
            ),
            "peer filtered in SQL/ledger status, median": ratio(
                med["peer: scan, filter in SQL"], med["ledger status"]
            ),
            f"ledger status {STATUS_JOB}/ledger status, median": ratio(
                med[f"ledger status {STATUS_JOB}"], med["ledger status"]
            ),
            "ledger --help/ledger status, median (start-up share)": ratio(
                med["ledger --help"], med["ledger status"]
            ),
        },
        "requirement": {
            "status_under_1s_p95": p95["ledger status"] < 1.0,
            "status_json_under_1s_p95": p95["ledger status --json"] < 1.0,
        },
    }
    path = write_results("status_latency", results)
    print()
    print(_table(results))
    print(f"\nresults: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
