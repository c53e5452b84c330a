"""Shared helpers for the adversarial tests."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import orjson
from conftest import FLIGHTS_JOB, ledger_command


def run_cli(
    args: list[str], url: str, cwd: Path, **kw: object
) -> subprocess.CompletedProcess[str]:
    return ledger_command(args, url=url, cwd=cwd, **kw)  # type: ignore[arg-type]


def flights_args(source: Path, output: object, *extra: str) -> list[str]:
    """`ledger run` of the flights job on one input into one output."""
    return [
        "run", str(FLIGHTS_JOB), "--input", str(source),
        "--param", f"output={output}", "--no-progress", *extra,
    ]  # fmt: skip


def one_clear_line(result: subprocess.CompletedProcess[str]) -> bool:
    lines = result.stderr.strip().splitlines()
    return (
        result.returncode == 2
        and len(lines) == 1
        and lines[0].startswith("error: ")
        and "Traceback" not in result.stderr
    )


def event_count(sqlite_path: Path) -> int:
    with sqlite3.connect(sqlite_path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])


def flights_rows(path: Path) -> int:
    if not path.exists():
        return -1
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM flights").fetchone()[0])


def status_json(url: str, cwd: Path, job: str | None = None) -> list[dict]:  # type: ignore[type-arg]
    args = ["status", "--json"] + ([job] if job else [])
    result = run_cli(args, url, cwd)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)  # type: ignore[no-any-return]
