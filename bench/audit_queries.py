"""Benchmark: `ledger report` and `ledger status --as-of` on 90 days of a job.

The requirement: `ledger status JOB --as-of TIME` answers in under two
seconds on a ledger holding 90 days of a busy job (5,000,000 events,
thousands of runs). The ledger is made once (`audit_store`, cached) on
SQLite and, with `--postgres URL`, on PostgreSQL; then each query is
timed as a user meets it (the CLI in a fresh process) and as a program
does (the function, in this process), side by side in the same rounds
with its peer (`audit_peer.py`: one raw SELECT of the stored events the
answer is about, decoded, nothing more), and reported as ratios.

Usage: python bench/audit_queries.py [--events N] [--rounds N]
       [--postgres postgresql://USER:PASSWORD@HOST:PORT/DB]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from audit_ledger import FIRST_DAY, JOB
from audit_peer import read_events
from audit_store import Built, postgres_ledger, sqlite_ledger
from measure import BENCH, environment, ledger_command, ratio, summarize, write_results

from ledger.as_of import status_as_of
from ledger.config import parse_ledger_url
from ledger.report_source import report_run
from ledger.report_text import render

# One timed thing: a fresh process (argv), or a call in this process.
Case = tuple[str, list[str] | Callable[[], Any]]


def _subjects(built: Built) -> dict[str, Any]:
    """What to ask, chosen from the read tables: a run with an incident
    (a failure, an operator's pause, quarantined records) and a plain run
    near the middle of the 90 days, and moments that matter."""
    path = built.url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        early, _ = _plain_run(db, 2)
        halfway, plain = _plain_run(db, 45)
        incident, failed_at = db.execute(
            "SELECT r.run_id, a.ended_at FROM proj_runs r JOIN proj_attempts a "
            "ON a.run_id = r.run_id AND a.attempt = 1 AND a.outcome = 'failed' "
            "WHERE EXISTS (SELECT 1 FROM proj_actions p WHERE p.run_id = r.run_id "
            "AND p.action = 'pause') AND r.started_at >= ? "
            "ORDER BY r.started_at LIMIT 1",
            ((FIRST_DAY + timedelta(days=45)).isoformat(),),
        ).fetchone()
        [last] = db.execute("SELECT MAX(updated_at) FROM proj_runs").fetchone()
    failed = datetime.fromisoformat(failed_at) + timedelta(seconds=1)
    return {
        "incident_run": incident,
        "plain_run": plain,
        "moments": {
            "early, a run live": early,
            "midway, a run live": halfway,
            "midway, a run failed": failed.isoformat(),
            "after the last event": (
                datetime.fromisoformat(last) + timedelta(days=5)
            ).isoformat(),
        },
    }


def _plain_run(db: sqlite3.Connection, day: int) -> tuple[str, str]:
    """Half-way through the first plain run (one attempt, no decision)
    started on or after `day`; and that run's id."""
    run_id, started, ended = db.execute(
        "SELECT run_id, started_at, ended_at FROM proj_runs WHERE attempts = 1 "
        "AND state = 'completed' AND started_at >= ? AND NOT EXISTS (SELECT 1 "
        "FROM proj_actions p WHERE p.run_id = proj_runs.run_id) "
        "ORDER BY started_at LIMIT 1",
        ((FIRST_DAY + timedelta(days=day)).isoformat(),),
    ).fetchone()
    begun = datetime.fromisoformat(started)
    middle = begun + (datetime.fromisoformat(ended) - begun) / 2
    return middle.isoformat(), run_id


def _cases(built: Built, subjects: dict[str, Any]) -> tuple[list[Case], dict[str, Any]]:
    """Every timed thing on one store, and the cross-checks made first."""
    url = built.url
    location = parse_ledger_url(url)
    ledger = [ledger_command(), "--ledger-url", url]
    peer = [sys.executable, str(BENCH / "audit_peer.py"), url]
    cases: list[Case] = [("ledger --help", [ledger[0], "--help"])]
    checks: dict[str, Any] = {}

    for label, run_id in (("incident", subjects["incident_run"]),
                          ("plain", subjects["plain_run"])):  # fmt: skip
        document = report_run(location, run_id).document()
        decoded = read_events(url, [run_id])
        checks[f"report {label}: events"] = (document["events"]["run"], len(decoded))
        for fmt in ("json", "html"):
            name = f"report {label} {fmt}"
            cases.append((f"{name}: CLI", [*ledger, "report", run_id, "--format", fmt]))
            cases.append((f"{name}: function", _report_call(location, run_id, fmt)))
        cases.append((f"report {label} peer: CLI", [*peer, run_id]))
        cases.append((f"report {label} peer: function", _peer_call(url, [run_id])))

    for label, moment in subjects["moments"].items():
        at = datetime.fromisoformat(moment)
        fast = status_as_of(location, JOB, at)
        folded = status_as_of(location, JOB, at, fold_all=True)
        named = [run.run_id for run in fast]
        checks[f"as of {label}"] = {
            "runs": len(fast),
            "states": sorted({run.state for run in fast}),
            "same as folding every run": fast == folded,
            "peer events": len(read_events(url, named)),
        }
        argv = [*ledger, "status", JOB, "--as-of", moment, "--json"]
        cases.append((f"as of {label}: CLI", argv))
        cases.append((f"as of {label}: function", _as_of_call(location, at, False)))
        cases.append(
            (f"as of {label}: fold every run", _as_of_call(location, at, True))
        )
        cases.append((f"as of {label} peer: CLI", [*peer, *named]))
        cases.append((f"as of {label} peer: function", _peer_call(url, named)))
    return cases, checks


def _report_call(location: Any, run_id: str, fmt: str) -> Callable[[], Any]:
    return lambda: render(report_run(location, run_id), fmt)


def _as_of_call(location: Any, at: datetime, fold_all: bool) -> Callable[[], Any]:
    def call() -> bytes:
        runs = status_as_of(location, JOB, at, fold_all=fold_all)
        return orjson.dumps([run.as_dict() for run in runs])

    return call


def _peer_call(url: str, run_ids: list[str]) -> Callable[[], Any]:
    return lambda: read_events(url, run_ids)


def _time(case: Case) -> float:
    _, what = case
    if callable(what):
        started = time.perf_counter()
        what()
        return time.perf_counter() - started
    from measure import time_command

    return time_command(what).wall_s


def _measure(cases: list[Case], rounds: int, warmups: int) -> dict[str, list[float]]:
    """Every case once a round, in an order that rotates between rounds."""
    for _ in range(warmups):
        for case in cases:
            _time(case)
    samples: dict[str, list[float]] = {name: [] for name, _ in cases}
    for number in range(rounds):
        shift = (number * 7) % len(cases)
        for case in cases[shift:] + cases[:shift]:
            samples[case[0]].append(_time(case))
    return samples


def _ratios(medians: dict[str, float]) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, value in medians.items():
        subject, _, how = name.partition(": ")
        if " peer" in subject or how in ("fold every run", ""):
            continue
        kind = "CLI" if how == "CLI" else "function"
        if subject.startswith("report"):
            label = subject.split()[1]
            peer = medians[f"report {label} peer: {kind}"]
        else:
            peer = medians[f"{subject} peer: {kind}"]
        found[f"{name} / peer"] = ratio(value, peer)
        if subject.startswith("as of") and how == "function":
            folded = medians[f"{subject}: fold every run"]
            found[f"{subject}: fold every run / function"] = ratio(folded, value)
    return found


def _table(store: str, timings: dict[str, Any], ratios: dict[str, float]) -> str:
    lines = [f"\n{store}", f"{'query':<52} {'median':>9} {'p95':>9}"]
    for name, stats in timings.items():
        lines.append(f"{name:<52} {stats['median_s']:>8.3f}s {stats['p95_s']:>8.3f}s")
    lines.append("")
    lines += [f"{name:<70} {value:>7.2f}x" for name, value in ratios.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmups", type=int, default=1)
    parser.add_argument("--postgres", default=None, metavar="URL")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()

    built = [sqlite_ledger(args.events)]
    if args.postgres:
        built.append(postgres_ledger(args.postgres, built[0]))
    for item in built:
        how = "reused" if item.reused else "made"
        print(f"{item.store}: {item.events:,} events, {item.runs:,} runs ({how}; "
              f"generated in {item.generation_s:.0f} s, copied in {item.copy_s:.0f} s, "
              f"read tables built in {item.projection_s:.0f} s)")  # fmt: skip
    subjects = _subjects(built[0])

    stores: dict[str, Any] = {}
    for item in built:
        cases, checks = _cases(item, subjects)
        print(f"{item.store} cross-checks: {orjson.dumps(checks).decode()}")
        samples = _measure(cases, args.rounds, args.warmups)
        timings = {name: summarize(values) for name, values in samples.items()}
        medians = {name: stats["median_s"] for name, stats in timings.items()}
        ratios = _ratios(medians)
        stores[item.store] = {
            "ledger": item.as_dict(),
            "cross_checks": checks,
            "timings": timings,
            "ratios": ratios,
            "as_of_cli_under_2s_p95": all(
                stats["p95_s"] < 2.0
                for name, stats in timings.items()
                if name.startswith("as of")
                and name.endswith(": CLI")
                and " peer" not in name
            ),
        }
        print(_table(item.store, timings, ratios))

    results = {
        "benchmark": "audit_queries",
        "command": " ".join(sys.argv),
        "environment": environment(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
        "rounds": args.rounds,
        "warmups": args.warmups,
        "subjects": subjects,
        "stores": stores,
    }
    path = write_results("audit_queries", results)
    print(f"\nresults: {os.path.relpath(path)}  ({Path(path).stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
