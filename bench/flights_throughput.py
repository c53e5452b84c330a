"""Benchmark: the flights import through the ledger, next to the bare steps.

The ledger side is the real command on the full real input (336,776 rows):
`ledger run examples/flights.py --no-progress --json` with a fresh SQLite
ledger and output in a temporary folder. The peer (bench/flights_peer.py)
runs the same three steps' own code in a plain loop with no ledger at all,
so ledger/peer is what the ledger itself costs. A second peer runs each
batch through all three steps at once with nothing staged between them:
what a script with no thought of restarting would do. It prices the job's
restartable design, apart from the ledger.

Every side runs as a fresh process in a fresh folder, once a round, in an
order that rotates between rounds. One more ledger run under cProfile
shows where the time goes. With `--postgres URL` each round also runs the
ledger on PostgreSQL, in a fresh database made (and dropped) on the URL's
server.

Usage: python bench/flights_throughput.py [--rounds N] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import pstats
import sqlite3
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
from measure import (
    BENCH,
    REPO,
    environment,
    ledger_command,
    ratio,
    summarize,
    time_command,
    write_results,
)
from psycopg import sql

ROWS = 336_776
PROFILE_TOP = 15

# Functions whose cumulative time says where the time goes, matched by a
# path fragment and a name. "of which" rows sit inside the row above them.
WHERE_TIME_GOES = {
    "ledger: open the store": ("/ledger/", "open_ledger"),
    "ledger: name the input (sha256)": ("/ledger/", "describe_input"),
    "ledger: find the run, claim an attempt": ("/ledger/", "_claim"),
    "ledger: Application.save, every save": ("eventsourcing/application.py", "save"),
    "job: extract.read (unzip, split lines)": ("examples/flights.py", "read"),
    "job: read staged rows (enrich, load)": ("examples/flights.py", "staged"),
    "job: handle, all three steps": ("examples/flights.py", "handle"),
    "  of which parse_row (extract)": ("examples/flights.py", "parse_row"),
    "job: write, all three steps": ("examples/flights.py", "write"),
    "  of which staging (extract, enrich)": ("examples/flights.py", "stage"),
    "job: close (delete staged rows)": ("examples/flights.py", "close"),
}

# The job's own entry points that the runtime calls; what `run_job` spends
# outside them is the ledger's runtime, store and bookkeeping.
JOB_ENTRY_POINTS = ("read", "staged", "handle", "write", "size", "open", "close")


@dataclass(frozen=True)
class Outcome:
    """One side's run: its timings, its own summary, the rows it loaded."""

    wall_s: float
    cpu_s: float
    summary: dict[str, Any]
    rows: int = 0


def _ledger_run(url: str | None, folder: Path) -> Outcome:
    """One `ledger run` of the flights job; SQLite ledger unless `url`."""
    env = dict(os.environ)
    argv = [ledger_command()]
    if url is None:
        argv += ["--ledger-url", f"sqlite:///{folder / 'ledger.sqlite'}"]
    else:
        # Through the environment, so the password stays out of `ps`.
        env["LEDGER_URL"] = url
    argv += [
        "run", "examples/flights.py", "--no-progress", "--json",
        "--param", f"output={folder / 'out.sqlite'}",
    ]  # fmt: skip
    wall, cpu, out = time_command(argv, env=env, cwd=REPO)
    return Outcome(wall, cpu, orjson.loads(out))


def _peer_run(folder: Path, *flags: str) -> Outcome:
    argv = [sys.executable, str(BENCH / "flights_peer.py"), str(folder / "out.sqlite")]
    wall, cpu, out = time_command([*argv, *flags], cwd=REPO)
    return Outcome(wall, cpu, orjson.loads(out))


def _flights_rows(folder: Path) -> int:
    with closing(sqlite3.connect(folder / "out.sqlite")) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM flights").fetchone()[0])


@contextmanager
def _fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the URL's server; dropped after."""
    name = f"bench_flights_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


Side = Callable[[Path], Outcome]


def _sides(postgres: str | None) -> dict[str, Side]:
    """Each side: one run in the given fresh folder, timed from outside."""
    sides: dict[str, Side] = {
        "ledger_sqlite": lambda folder: _ledger_run(None, folder),
        "peer_same_steps": _peer_run,
        "peer_single_pass": lambda folder: _peer_run(folder, "--single-pass"),
    }
    if postgres is not None:

        def on_postgres(folder: Path) -> Outcome:
            with _fresh_database(postgres) as url:
                return _ledger_run(url, folder)

        sides["ledger_postgres"] = on_postgres
    return sides


def _round(sides: dict[str, Side], number: int) -> dict[str, Outcome]:
    """Every side once; the order rotates so that none always goes first."""
    names = list(sides)
    shift = number % len(names)
    measured: dict[str, Outcome] = {}
    for name in names[shift:] + names[:shift]:
        with tempfile.TemporaryDirectory(prefix="bench-flights-") as folder:
            outcome = sides[name](Path(folder))
            rows = _flights_rows(Path(folder))
        measured[name] = Outcome(outcome.wall_s, outcome.cpu_s, outcome.summary, rows)
    return {name: measured[name] for name in names}


def _short(where: tuple[str, int, str]) -> str:
    """A profile entry's place, with the long path prefixes cut."""
    path, line, name = where
    for prefix in (str(REPO) + "/", "site-packages/"):
        if prefix in path:
            path = path.split(prefix, 1)[1]
    return f"{path}:{line}({name})" if line else name


def _profile() -> dict[str, Any]:
    """One ledger run under cProfile: top functions by cumulative time."""
    with tempfile.TemporaryDirectory(prefix="bench-flights-") as folder:
        work = Path(folder)
        out = work / "run.prof"
        argv = [
            sys.executable, "-m", "cProfile", "-o", str(out), "-m", "ledger",
            "--ledger-url", f"sqlite:///{work / 'ledger.sqlite'}",
            "run", "examples/flights.py", "--no-progress", "--json",
            "--param", f"output={work / 'out.sqlite'}",
        ]  # fmt: skip
        seconds = time_command(argv, cwd=REPO).wall_s
        # The raw table, one row per function; typeshed does not declare it.
        stats: dict[tuple[str, int, str], tuple[Any, ...]] = vars(
            pstats.Stats(str(out))
        )["stats"]

    def entry(where: tuple[str, int, str], row: tuple[Any, ...]) -> dict[str, Any]:
        _, calls, tottime, cumtime, _ = row
        return {
            "function": _short(where),
            "calls": calls,
            "tottime_s": round(tottime, 3),
            "cumtime_s": round(cumtime, 3),
        }

    ranked = sorted(stats.items(), key=lambda item: item[1][3], reverse=True)
    by_tottime = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)

    def cumulative(fragment: str, names: tuple[str, ...]) -> float:
        return float(
            sum(
                row[3]
                for where, row in stats.items()
                if fragment in where[0] and where[2] in names
            )
        )

    # Above `run_job` sit only the interpreter's and click's frames, each
    # with the whole run as its cumulative time: they say nothing.
    run_job = cumulative("/ledger/", ("run_job",))
    below = [item for item in ranked if item[1][3] <= run_job]
    in_job = cumulative("examples/flights.py", JOB_ENTRY_POINTS)
    return {
        "wall_s_under_profile": round(seconds, 2),
        "top_cumulative": [entry(w, r) for w, r in ranked[:PROFILE_TOP]],
        "top_cumulative_from_run_job": [entry(w, r) for w, r in below[:PROFILE_TOP]],
        "top_tottime": [entry(w, r) for w, r in by_tottime[:PROFILE_TOP]],
        "where_time_goes_cumulative_s": {
            label: round(cumulative(fragment, (name,)), 3)
            for label, (fragment, name) in WHERE_TIME_GOES.items()
        },
        "run_job_s": round(run_job, 3),
        "job_code_s": round(in_job, 3),
        "ledger_share_of_run_job": round(1 - in_job / run_job, 3),
    }


def _side(outcomes: list[Outcome]) -> dict[str, Any]:
    stats = summarize([outcome.wall_s for outcome in outcomes])
    cpu = summarize([outcome.cpu_s for outcome in outcomes])
    last = outcomes[-1].summary
    side = {
        **stats,
        "cpu_median_s": cpu["median_s"],
        "cpu_samples_s": cpu["samples_s"],
        "rows_per_s_median": round(ROWS / stats["median_s"]),
        "flights_rows_loaded": sorted({outcome.rows for outcome in outcomes}),
    }
    if "events_written" in last:
        side.update(
            events_written=last["events_written"],
            batches=last["batches"],
            status=last["status"],
            quarantined_by_reason=last["quarantined_by_reason"],
            elapsed_inside_s=[o.summary["elapsed_seconds"] for o in outcomes],
        )
    else:
        side.update(
            steps=last["steps"],
            elapsed_inside_s=[o.summary["seconds"] for o in outcomes],
        )
    return side


def _ratios(
    rounds: list[dict[str, Outcome]], sides: dict[str, Any], top: str, bottom: str
) -> dict[str, float]:
    """Three views of one ratio; the paired one cancels drift between rounds."""
    paired = [ratio(r[top].wall_s, r[bottom].wall_s) for r in rounds]
    return {
        "wall_median": ratio(sides[top]["median_s"], sides[bottom]["median_s"]),
        "wall_paired_median": statistics.median(paired),
        "cpu_median": ratio(sides[top]["cpu_median_s"], sides[bottom]["cpu_median_s"]),
    }


def _table(results: dict[str, Any]) -> str:
    lines = [
        f"{'side':<18} {'median':>9} {'p95':>9} {'cpu':>9} {'rows/s':>9} {'events':>7}"
    ]
    for name, side in results["sides"].items():
        lines.append(
            f"{name:<18} {side['median_s']:>8.2f}s {side['p95_s']:>8.2f}s "
            f"{side['cpu_median_s']:>8.2f}s {side['rows_per_s_median']:>9,} "
            f"{side.get('events_written', '-'):>7}"
        )
    lines.append("")
    lines.append(f"{'ratio':<38} {'wall':>6} {'paired':>7} {'cpu':>6}")
    for name, views in results["ratios"].items():
        lines.append(
            f"{name:<38} {views['wall_median']:>5.2f}x "
            f"{views['wall_paired_median']:>6.2f}x {views['cpu_median']:>5.2f}x"
        )
    profile = results.get("profile")
    if profile:
        lines.append("")
        lines.append(
            f"cProfile, top {PROFILE_TOP} by cumulative time from run_job down "
            f"(run took {profile['wall_s_under_profile']:.1f} s under the profiler):"
        )
        for row in profile["top_cumulative_from_run_job"]:
            lines.append(
                f"  {row['cumtime_s']:>7.2f}s {row['tottime_s']:>7.2f}s "
                f"{row['calls']:>9,}  {row['function']}"
            )
        lines.append("where the time goes (cumulative s, under the profiler):")
        for label, value in profile["where_time_goes_cumulative_s"].items():
            lines.append(f"  {value:>7.2f}s  {label}")
        lines.append(
            f"run_job {profile['run_job_s']:.2f} s, of which the job's own code "
            f"{profile['job_code_s']:.2f} s: the ledger's share is "
            f"{profile['ledger_share_of_run_job']:.1%}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", metavar="URL", default=None)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()

    sides_to_run = _sides(args.postgres)
    rounds = []
    for number in range(1, args.rounds + 1):
        measured = _round(sides_to_run, number)
        rounds.append(measured)
        shown = ", ".join(f"{name} {o.wall_s:.1f} s" for name, o in measured.items())
        print(f"round {number}: {shown}")

    sides = {name: _side([measured[name] for measured in rounds]) for name in rounds[0]}
    pairs = {
        "ledger (SQLite)/peer, same steps": ("ledger_sqlite", "peer_same_steps"),
        "ledger (SQLite)/peer, single pass": ("ledger_sqlite", "peer_single_pass"),
        "peer same steps/peer single pass": ("peer_same_steps", "peer_single_pass"),
        "ledger (PostgreSQL)/peer, same steps": ("ledger_postgres", "peer_same_steps"),
    }
    ratios = {
        label: _ratios(rounds, sides, top, bottom)
        for label, (top, bottom) in pairs.items()
        if top in sides
    }

    results: dict[str, Any] = {
        "benchmark": "flights_throughput",
        "environment": environment(),
        "rows": ROWS,
        "rounds": args.rounds,
        "sides": sides,
        "ratios": ratios,
    }
    if not args.no_profile:
        print("profiling one more ledger run ...")
        results["profile"] = _profile()
    path = write_results("flights_throughput", results)
    print()
    print(_table(results))
    print(f"\nresults: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
