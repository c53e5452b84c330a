"""Who is working on a run, and whether that worker is still alive.

A worker is identified by host, boot id, pid and the pid's start time, so
that a reused pid or a rebooted host is never mistaken for the old worker.
On the same host that check is exact and immediate. Anywhere, a worker
whose lease expired has lost the run: a live worker renews its lease with
every batch and, between batches, with a heartbeat (`ledger.lease`), so an
expired lease means a lost node, a frozen process or a partition, and the
run may be taken over. Its late appends are then refused (the attempt
number is the fencing token).
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
    lease_expired: bool = False


def describe(worker: dict[str, Any]) -> str:
    return f"pid {worker.get('pid')} on host {worker.get('host')}"


def liveness(worker: dict[str, Any], lease: str) -> Liveness:
    """Whether the worker that holds a claim is still alive, and why.

    On its own host a dead process is found at once, with the evidence.
    Past that, and on any other host, the lease decides: a worker alive
    but silent past its lease (frozen, cut off) has lost the run.
    """
    me = current_worker()

    # Same host: the process table is exact.
    if worker.get("host") == me["host"]:
        if worker.get("boot_id") and worker.get("boot_id") != me["boot_id"]:
            return Liveness(
                False, f"host {me['host']} rebooted since {describe(worker)}"
            )
        started = _process_start(int(worker.get("pid", 0)))
        if started is None:
            return Liveness(False, f"{describe(worker)} is gone")
        state, start_time = started
        if state in ("Z", "X") or start_time != worker.get("pid_started"):
            return Liveness(
                False, f"{describe(worker)} is gone: its pid was reused or is defunct"
            )

    # Anywhere: a worker that stopped renewing its lease has lost the run.
    expired = datetime.fromisoformat(lease) <= datetime.now(UTC) if lease else True
    if expired:
        return Liveness(
            False,
            f"lease of {describe(worker)} expired at {lease[:19]}Z",
            lease_expired=True,
        )
    if worker.get("host") == me["host"]:
        return Liveness(True, f"{describe(worker)} is alive")
    return Liveness(True, f"{describe(worker)} holds a lease until {lease[:19]}Z")
