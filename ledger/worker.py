"""Who is working on a run, and whether that worker is still alive.

A worker is identified by host, boot id, pid and the pid's start time, so
that a reused pid or a rebooted host is never mistaken for the old worker.
On the same host that check is exact. For a worker on another host the
ledger cannot look at its process, so it trusts the lease: the worker's
claim runs until `lease_until`, renewed with every batch it starts or
checkpoints.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "LEASE_SECONDS",
    "Liveness",
    "current_worker",
    "lease_until",
    "liveness",
    "now_iso",
]

LEASE_SECONDS = int(os.environ.get("LEDGER_LEASE_SECONDS", "300"))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def lease_until(seconds: int = LEASE_SECONDS) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> tuple[str, str] | None:
    """The state letter and start time of a process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None

    # The command name sits in parentheses and may itself hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def current_worker() -> dict[str, Any]:
    pid = os.getpid()
    started = _process_start(pid)
    return {
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "pid": pid,
        "pid_started": started[1] if started else "",
    }


@dataclass(frozen=True)
class Liveness:
    alive: bool
    evidence: str


def describe(worker: dict[str, Any]) -> str:
    return f"pid {worker.get('pid')} on host {worker.get('host')}"


def liveness(worker: dict[str, Any], lease: str) -> Liveness:
    """Whether the worker that holds a claim is still alive, and why."""
    me = current_worker()

    # Another host: only the lease can tell.
    if worker.get("host") != me["host"]:
        expired = datetime.fromisoformat(lease) <= datetime.now(UTC) if lease else True
        if expired:
            return Liveness(False, f"lease of {describe(worker)} expired at {lease}")
        return Liveness(True, f"{describe(worker)} holds a lease until {lease}")

    # Same host: the process table is exact.
    if worker.get("boot_id") and worker.get("boot_id") != me["boot_id"]:
        return Liveness(False, f"host {me['host']} rebooted since {describe(worker)}")
    started = _process_start(int(worker.get("pid", 0)))
    if started is None:
        return Liveness(False, f"{describe(worker)} is gone")
    state, start_time = started
    if state in ("Z", "X") or start_time != worker.get("pid_started"):
        return Liveness(
            False, f"{describe(worker)} is gone: its pid was reused or is defunct"
        )
    return Liveness(True, f"{describe(worker)} is alive")
