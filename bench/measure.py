"""What every benchmark here shares: timing a command, summing up, saving.

Each benchmark runs the product and its peer in one process tree, one
after the other, so both meet the same machine state; results are ratios
first, seconds second. Nothing here asserts a time: a benchmark reports,
the reader judges.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import orjson

__all__ = [
    "BENCH",
    "CACHE",
    "FLIGHTS_JOB",
    "REPO",
    "RESULTS",
    "CommandFailed",
    "Measured",
    "environment",
    "ledger_command",
    "load_flights_module",
    "ratio",
    "summarize",
    "time_command",
    "write_results",
]

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"
RESULTS = BENCH / "results"
FLIGHTS_JOB = REPO / "examples" / "flights.py"


class CommandFailed(RuntimeError):
    """A measured command exited non-zero: its timing would mean nothing."""

    def __init__(self, argv: Sequence[str], code: int, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-5:]
        super().__init__(
            f"{' '.join(argv)} exited {code}: {' | '.join(tail) or 'no stderr'}; "
            "fix the command (or the ledger it reads) before measuring it"
        )
        self.code = code


def ledger_command() -> str:
    """The `ledger` script of the interpreter running the benchmark."""
    script = Path(sys.executable).parent / "ledger"
    if not script.is_file():
        raise FileNotFoundError(
            f"no ledger command next to {sys.executable}; activate the dev "
            "virtualenv (. .venv/bin/activate) and install the project"
        )
    return str(script)


def load_flights_module() -> ModuleType:
    """examples/flights.py, imported from its path as `ledger run` does."""
    spec = importlib.util.spec_from_file_location("bench_flights_job", FLIGHTS_JOB)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {FLIGHTS_JOB} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Measured(NamedTuple):
    """One run of a command: wall and CPU seconds, and what it printed."""

    wall_s: float
    cpu_s: float
    stdout: str


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Measured:
    """One run of a command, timed from outside.

    CPU seconds (user + system, of the command and its children) barely
    move when something else shares the machine; wall seconds do, but
    include the waits for disk flushes that CPU time leaves out.
    """
    cpu_before = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
    )
    elapsed = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before

    # A failing command is usually fast; timing it would flatter it.
    if done.returncode != 0:
        raise CommandFailed(argv, done.returncode, done.stderr)
    return Measured(elapsed, cpu, done.stdout)


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median and p95 (linear interpolation between the closest ranks)."""
    ordered = sorted(samples)
    p95 = ordered[-1]
    if len(ordered) > 1:
        p95 = statistics.quantiles(ordered, n=20, method="inclusive")[-1]
    return {
        "runs": len(ordered),
        "median_s": round(statistics.median(ordered), 4),
        "p95_s": round(p95, 4),
        "min_s": round(ordered[0], 4),
        "max_s": round(ordered[-1], 4),
        "samples_s": [round(s, 4) for s in samples],
    }


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 2) if denominator else float("nan")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    """What a reader needs to compare these numbers with their own."""
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "eventsourcing": _version("eventsourcing"),
        "orjson": _version("orjson"),
        "psycopg": _version("psycopg"),
    }


def write_results(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return path
