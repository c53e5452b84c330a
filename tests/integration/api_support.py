"""What the HTTP API tests share: tokens, the real server, and a ledger
with real runs in it.

The server is the real `ledger serve` in a subprocess on 127.0.0.1, with
LEDGER_URL naming a fresh ledger (SQLite or the real PostgreSQL server);
the runs are made by the real `ledger run` on the numbers test job.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
from conftest import LEDGER, NUMBERS_JOB, ledger_command, wait_until, write_numbers

from ledger.config import parse_ledger_url

OPERATOR = ("alice", "operator", "alice-operator-token-0123456789")
VIEWER = ("victor", "viewer", "victor-viewer-token-9876543210")


def write_tokens(folder: Path) -> Path:
    """A tokens file with one operator and one viewer, mode 600."""
    path = folder / "tokens"
    lines = ["# name role token", *(" ".join(entry) for entry in (OPERATOR, VIEWER))]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def bearer(entry: tuple[str, str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {entry[2]}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class ApiServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, entry: tuple[str, str, str] | None = None) -> httpx.Client:
        # trust_env off: nothing from the environment (a proxy) may send
        # these requests anywhere but this server.
        return httpx.Client(
            base_url=self.base_url,
            headers=bearer(entry) if entry else {},
            trust_env=False,
            timeout=60,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def served(url: str, folder: Path, *, log_level: str = "error") -> Iterator[ApiServer]:
    """The real `ledger serve` on a free local port, until the block ends."""
    tokens = write_tokens(folder)
    port = free_port()
    log_path = folder / f"serve-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*LEDGER, "--log-level", log_level, "serve", "--port", str(port),
             "--tokens", str(tokens)],
            cwd=folder, env={**os.environ, "LEDGER_URL": url},
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = ApiServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until(lambda: _healthy(server), "the API server to answer /healthz", 30)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"the API server did not stop on SIGTERM:\n{server.log()}")


def _healthy(server: ApiServer) -> bool:
    if server.process.poll() is not None:
        pytest.fail(
            f"the API server exited with {server.process.returncode}:\n{server.log()}"
        )
    try:
        with server.client() as client:
            return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


@dataclass(frozen=True)
class Runs:
    """The ids of the runs `make_runs` left in the ledger."""

    failed: str
    completed: str


def make_runs(url: str, folder: Path) -> Runs:
    """A failed run with a quarantined record, and a completed run."""
    numbers = write_numbers(folder / "failing.txt", 100, bad=(57,))
    marker = folder / "fail"
    marker.touch()
    failed = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "10",
         "--no-progress", "--json", "--param", f"fail_marker={marker}",
         "--param", "fail_batch=3", "--param", f"output={folder / 'a.sqlite'}"],
        url=url, cwd=folder,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    shown = ledger_command(["status", "--json"], url=url, cwd=folder)
    [failed_run] = orjson.loads(shown.stdout)
    done = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(write_numbers(folder / "ok.txt", 30)),
         "--batch-size", "10", "--no-progress", "--json",
         "--param", f"output={folder / 'b.sqlite'}"],
        url=url, cwd=folder,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return Runs(
        failed=failed_run["run_id"],
        completed=orjson.loads(done.stdout)["run_id"],
    )


def start_held_run(url: str, folder: Path) -> tuple[subprocess.Popen[str], Path]:
    """A worker holding a run in its first `store` batch until the marker
    it returns is removed."""
    hold = folder / "hold"
    hold.touch()
    numbers = write_numbers(folder / "held.txt", 50)
    worker = subprocess.Popen(
        [*LEDGER, "run", str(NUMBERS_JOB), "--input", str(numbers),
         "--batch-size", "10", "--no-progress", "--param", f"hold_marker={hold}",
         "--param", f"output={folder / 'c.sqlite'}"],
        cwd=folder, env={**os.environ, "LEDGER_URL": url},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return worker, hold


def count_events(url: str) -> int:
    """How many events the store holds, read straight from its table."""
    location = parse_ledger_url(url)
    table = location.events_table
    if location.sqlite_path is not None:
        with sqlite3.connect(location.sqlite_path) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])
