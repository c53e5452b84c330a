"""Benchmark: what `context.effect` costs per call, next to a hand-rolled outbox.

One file job (bench/effects_job.py) makes one trivial in-process call per
record (a dict insert), four ways, on the same input of N records:

- `direct`: the call as it is, no effect API (the baseline);
- `effect_keys`: `context.effect` on a downstream that honours keys: the
  intent is one transaction before the call, the outcomes are written
  together before the checkpoint (~1 transaction a call);
- `effect_no_keys`: the same on one that does not: the outcome is written
  at once (~2 transactions a call);
- `outbox`: the peer, what a job author writes without the ledger: a
  write-ahead outbox table in the same kind of store (an SQLite file set up
  as the ledger's, or a PostgreSQL table through psycopg), the key inserted
  as 'intended' and committed before the call, set to 'done' and committed
  after: the least any write-ahead scheme pays.

Every run is `ledger.runtime.run_job` in this process, on a fresh ledger
(a new SQLite file, or a new PostgreSQL database made and dropped on the
`--postgres` server), timed around `run_job` only: opening the ledger and
the outbox is done before the clock starts. The overhead per call is
(variant - direct) / N. Each round runs every side once, in an order that
rotates between rounds. An untimed first round counts each side's store
transactions (and warms the process up); one more run of each effect side
under cProfile says where the time goes.

Usage: python bench/effects_overhead.py [--records N] [--rounds N]
                                        [--postgres URL] [--no-profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from effects_job import MODES, SINK, EffectsJob, Outbox, open_outbox
from measure import environment, ratio, summarize, write_results
from psycopg import sql

from ledger.config import parse_ledger_url
from ledger.effects import PENDING_MAX
from ledger.inputs import RUNTIME_PARAMETERS
from ledger.job import InputVersion
from ledger.logs import configure_logging
from ledger.runtime import describe_input, resolve_params, run_job
from ledger.store import Ledger, opened

JOB_REF = "bench/effects_job.py"
EFFECT_MODES = ("effect_keys", "effect_no_keys")
PROFILE_TOP = 12

_CONNECTION = "'sqlite3.Connection'"

# Where the time of an effect run goes, by a path fragment and a function
# name (cumulative seconds); "of which" rows sit inside the row above.
WHERE_TIME_GOES = {
    "EffectRegistry.call, all": ("/ledger/effects.py", "call"),
    "  key derivation (sha256 of the key's parts)": ("/ledger/effects.py", "key"),
    "  Effect.intend (the intent event)": ("/ledger/effect.py", "intend"),
    "  Effect.complete (the outcome event)": ("/ledger/effect.py", "complete"),
    "  the lease check (Heartbeat.check)": ("/ledger/lease.py", "check"),
    "  failpoints (faults.hit, reads os.environ)": ("/ledger/faults.py", "hit"),
    "Application.save, every save": ("eventsourcing/application.py", "save"),
    "  of which SQLite commit": ("~", f"<method 'commit' of {_CONNECTION} objects>"),
    "  of which psycopg pipeline sync": ("psycopg/", "sync"),
    "  of which event encoding": ("eventsourcing/persistence.py", "to_stored_event"),
    "  of which Protocol isinstance checks": ("typing.py", "__instancecheck__"),
}  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One run of one side: seconds around `run_job`, and what it stored."""

    wall_s: float
    cpu_s: float
    events: int

    # Counted in the untimed round only: the ledger's saves (one store
    # transaction each) and the outbox's commits.
    saves: int = 0
    outbox_commits: int = 0


@dataclass(frozen=True)
class Store:
    """A fresh ledger and the place for the peer's outbox, beside it."""

    ledger_url: str
    outbox: str


def _input(folder: Path, records: int) -> InputVersion:
    path = folder / "numbers.txt"
    path.write_text("".join(f"{n}\n" for n in range(records)))
    return describe_input(path)


@contextmanager
def _fresh_store(kind: str, admin_url: str | None) -> Iterator[Store]:
    """A new, empty ledger: an SQLite file in a new folder, or a new
    PostgreSQL database on the admin URL's server, dropped after."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-effects-") as folder:
            yield Store(
                f"sqlite:///{Path(folder) / 'ledger.sqlite'}",
                str(Path(folder) / "outbox.sqlite"),
            )
        return
    assert admin_url is not None
    name = f"bench_effects_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    try:
        yield Store(url, url)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


def _count_saves(ledger: Ledger) -> list[int]:
    """Counts the ledger's saves from now on: each is one store transaction."""
    count = [0]
    save = ledger.save

    def counted(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return save(*args, **kwargs)

    setattr(ledger, "save", counted)  # noqa: B010 - mypy refuses method-assign
    return count


def _outbox_done(where: str) -> int:
    query = "SELECT COUNT(*) FROM outbox WHERE state = 'done'"
    if where.startswith("postgresql://"):
        with psycopg.connect(where, connect_timeout=5) as conn:
            row = conn.execute(query).fetchone()
    else:
        with closing(sqlite3.connect(where)) as db:
            row = db.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _run_once(
    store: Store,
    mode: str,
    source: InputVersion,
    records: int,
    *,
    count: bool = False,
    profile: cProfile.Profile | None = None,
) -> Sample:
    """One run of the job in `mode` on `store`, timed around `run_job`."""
    outbox: Outbox | None = open_outbox(store.outbox) if mode == "outbox" else None
    job = EffectsJob(outbox)
    params = resolve_params(job, {"mode": mode})
    SINK.clear()
    with opened(parse_ledger_url(store.ledger_url)) as ledger:
        saves = _count_saves(ledger) if count else None
        if profile is not None:
            profile.enable()
        cpu, started = time.process_time(), time.perf_counter()
        summary = run_job(ledger, job, JOB_REF, source, params)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        if profile is not None:
            profile.disable()
        events = ledger.recorder.max_notification_id() or 0

    # A run that did not make every call once measured nothing.
    if summary.status != "completed" or len(SINK) != records:
        raise RuntimeError(
            f"{mode} on {store.ledger_url.split(':')[0]}: {summary.status}, "
            f"{len(SINK)} calls of {records}; the job or the ledger is broken"
        )
    if outbox is not None and _outbox_done(store.outbox) != records:
        raise RuntimeError(f"outbox: not every key is 'done' after {mode}")
    return Sample(
        wall,
        cpu,
        events,
        saves=saves[0] if saves else 0,
        outbox_commits=outbox.commits if outbox else 0,
    )


def _sides(stores: list[str]) -> list[tuple[str, str]]:
    return [(store, mode) for store in stores for mode in MODES]


def _round(
    sides: list[tuple[str, str]],
    admin_url: str | None,
    source: InputVersion,
    records: int,
    number: int,
    *,
    count: bool = False,
) -> dict[str, Sample]:
    """Every side once, in an order that rotates between rounds."""
    shift = number % len(sides)
    measured: dict[str, Sample] = {}
    for store, mode in sides[shift:] + sides[:shift]:
        with _fresh_store(store, admin_url) as fresh:
            sample = _run_once(fresh, mode, source, records, count=count)
            measured[f"{mode}_{store}"] = sample
    return {f"{mode}_{store}": measured[f"{mode}_{store}"] for store, mode in sides}


def _census(
    counted: dict[str, Sample], stores: list[str], records: int
) -> dict[str, Any]:
    """Transactions and events per call, over the baseline's."""
    census: dict[str, Any] = {}
    for store in stores:
        base = counted[f"direct_{store}"]
        for mode in MODES:
            sample = counted[f"{mode}_{store}"]
            extra = sample.saves - base.saves + sample.outbox_commits
            census[f"{mode}_{store}"] = {
                "ledger_events": sample.events,
                "ledger_saves": sample.saves,
                "outbox_commits": sample.outbox_commits,
                "transactions_per_call_over_baseline": round(extra / records, 4),
                "ledger_events_per_call_over_baseline": round(
                    (sample.events - base.events) / records, 4
                ),
            }
    return census


def _overheads(
    rounds: list[dict[str, Sample]], stores: list[str], records: int
) -> dict[str, Any]:
    """Per call, in µs: (variant - direct) / N, wall and CPU; the paired
    view takes each round's difference, which cancels drift between rounds."""
    out: dict[str, Any] = {}
    for store in stores:
        for mode in MODES[1:]:
            top, base = f"{mode}_{store}", f"direct_{store}"
            wall = [(r[top].wall_s - r[base].wall_s) / records * 1e6 for r in rounds]
            cpu = [(r[top].cpu_s - r[base].cpu_s) / records * 1e6 for r in rounds]
            out[top] = {
                "wall_us_paired_median": round(statistics.median(wall), 1),
                "wall_us_min": round(min(wall), 1),
                "wall_us_max": round(max(wall), 1),
                "cpu_us_paired_median": round(statistics.median(cpu), 1),
                "cpu_us_min": round(min(cpu), 1),
                "cpu_us_max": round(max(cpu), 1),
                "wall_us_samples": [round(w, 1) for w in wall],
                "cpu_us_samples": [round(c, 1) for c in cpu],
            }
    return out


def _ratios(
    rounds: list[dict[str, Sample]], overheads: dict[str, Any], stores: list[str]
) -> dict[str, Any]:
    """Effect overhead over the outbox's, per call: of the paired medians,
    and the median of each round's ratio."""
    out: dict[str, Any] = {}
    for store in stores:
        peer = overheads[f"outbox_{store}"]
        for mode in EFFECT_MODES:
            mine = overheads[f"{mode}_{store}"]
            paired = [
                ratio(
                    r[f"{mode}_{store}"].wall_s - r[f"direct_{store}"].wall_s,
                    r[f"outbox_{store}"].wall_s - r[f"direct_{store}"].wall_s,
                )
                for r in rounds
            ]
            out[f"{mode}/outbox, {store}"] = {
                "wall": ratio(
                    mine["wall_us_paired_median"], peer["wall_us_paired_median"]
                ),
                "wall_per_round_median": statistics.median(paired),
                "wall_per_round_min": min(paired),
                "wall_per_round_max": max(paired),
                "cpu": ratio(
                    mine["cpu_us_paired_median"], peer["cpu_us_paired_median"]
                ),
            }
    return out


def _profile(
    store: str, mode: str, admin_url: str | None, source: InputVersion, records: int
) -> dict[str, Any]:
    """One run under cProfile: where an effect's time goes, per call."""
    profile = cProfile.Profile()
    with _fresh_store(store, admin_url) as fresh:
        sample = _run_once(fresh, mode, source, records, profile=profile)
    # The raw table, one row per function; typeshed does not declare it.
    stats: dict[tuple[str, int, str], tuple[Any, ...]] = vars(pstats.Stats(profile))[
        "stats"
    ]

    def cumulative(fragment: str, name: str) -> float:
        return float(
            sum(
                row[3]
                for where, row in stats.items()
                if fragment in where[0] and where[2] == name
            )
        )

    def short(where: tuple[str, int, str]) -> str:
        path, line, name = where
        for cut in ("site-packages/", "/work/main/", "python3.11/"):
            path = path.split(cut, 1)[-1]
        return f"{path}:{line}({name})" if line else name

    by_tottime = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)
    per_call = {
        label: round(cumulative(fragment, name) / records * 1e6, 1)
        for label, (fragment, name) in WHERE_TIME_GOES.items()
    }
    return {
        "wall_s_under_profile": round(sample.wall_s, 3),
        "where_time_goes_us_per_call": {k: v for k, v in per_call.items() if v},
        "top_tottime": [
            {
                "function": short(where),
                "calls": row[1],
                "tottime_us_per_call": round(row[2] / records * 1e6, 1),
            }
            for where, row in by_tottime[:PROFILE_TOP]
        ],
    }


def _table(results: dict[str, Any]) -> str:
    lines = [f"{'ratio (per-call overhead)':<30} {'wall':>6} {'rounds':>12} {'cpu':>6}"]
    for name, r in results["ratios"].items():
        spread = f"{r['wall_per_round_min']:.2f}-{r['wall_per_round_max']:.2f}"
        lines.append(f"{name:<30} {r['wall']:>5.2f}x {spread:>12} {r['cpu']:>5.2f}x")
    lines += ["", f"{'overhead per call':<24} {'wall µs':>8} {'spread':>11} "
              f"{'cpu µs':>7} {'spread':>10} {'tx/call':>8}"]  # fmt: skip
    for name, o in results["overhead_per_call"].items():
        wall = f"{o['wall_us_min']:.0f}-{o['wall_us_max']:.0f}"
        cpu = f"{o['cpu_us_min']:.0f}-{o['cpu_us_max']:.0f}"
        tx = results["census"][name]["transactions_per_call_over_baseline"]
        lines.append(
            f"{name:<24} {o['wall_us_paired_median']:>8.1f} {wall:>11} "
            f"{o['cpu_us_paired_median']:>7.1f} {cpu:>10} {tx:>8.3f}"
        )
    lines += ["", f"{'side':<24} {'median':>8} {'min':>8} {'max':>8} {'cpu':>8}"]
    for name, side in results["sides"].items():
        lines.append(
            f"{name:<24} {side['median_s']:>7.3f}s {side['min_s']:>7.3f}s "
            f"{side['max_s']:>7.3f}s {side['cpu_median_s']:>7.3f}s"
        )
    for name, prof in results.get("profile", {}).items():
        lines.append(f"\ncProfile, {name}, µs per call (cumulative):")
        for label, value in prof["where_time_goes_us_per_call"].items():
            lines.append(f"  {value:>8.1f}  {label}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--postgres", metavar="URL", default=None)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    began = time.perf_counter()
    load_before = os.getloadavg()

    # The CLI's default: warnings and errors only, so a run prints nothing.
    configure_logging("warning")
    stores = ["sqlite"] + (["postgres"] if args.postgres else [])
    sides = _sides(stores)
    with tempfile.TemporaryDirectory(prefix="bench-effects-input-") as folder:
        source = _input(Path(folder), args.records)

        # Untimed: counts transactions, and warms up imports and caches.
        counted = _round(sides, args.postgres, source, args.records, 0, count=True)
        rounds = []
        for number in range(1, args.rounds + 1):
            measured = _round(sides, args.postgres, source, args.records, number)
            rounds.append(measured)
            shown = ", ".join(f"{n} {s.wall_s:.2f}" for n, s in measured.items())
            print(f"round {number} (s): {shown}", flush=True)

        overheads = _overheads(rounds, stores, args.records)
        results: dict[str, Any] = {
            "benchmark": "effects_overhead",
            "environment": environment(),
            "records": args.records,
            "batch_size": RUNTIME_PARAMETERS["batch_size"],
            "outcomes_held_in_memory_max": PENDING_MAX,
            "rounds": args.rounds,
            "ratios": _ratios(rounds, overheads, stores),
            "overhead_per_call": overheads,
            "census": _census(counted, stores, args.records),
            "sides": {},
        }
        for name in rounds[0]:
            wall = summarize([r[name].wall_s for r in rounds])
            cpu = summarize([r[name].cpu_s for r in rounds])
            results["sides"][name] = {
                **wall,
                "cpu_median_s": cpu["median_s"],
                "cpu_samples_s": cpu["samples_s"],
                "ledger_events": rounds[0][name].events,
            }
        if not args.no_profile:
            print("profiling one run of each effect side ...", flush=True)
            results["profile"] = {
                f"{mode}_{store}": _profile(
                    store, mode, args.postgres, source, args.records
                )
                for store in stores
                for mode in EFFECT_MODES
            }
    results["benchmark_wall_s"] = round(time.perf_counter() - began, 1)

    # The machine is shared: how busy it was says how far to trust the walls.
    results["load_average_1_5_15_min"] = {
        "at_start": [round(x, 2) for x in load_before],
        "at_end": [round(x, 2) for x in os.getloadavg()],
    }
    path = write_results("effects_overhead", results)
    print()
    print(_table(results))
    load = results["load_average_1_5_15_min"]
    print(
        f"\nwhole benchmark: {results['benchmark_wall_s']:.0f} s; load average "
        f"{load['at_start'][0]:.1f} at start, {load['at_end'][1]:.1f} over "
        "the last 5 min"
    )
    print(f"results: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
