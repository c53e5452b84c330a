"""The heartbeat that keeps a worker's lease alive between batches.

A worker's lease (`Run.lease_until`) is renewed by every batch it starts
or checkpoints. A batch slower than the lease, a paused worker or an idle
consumer renews nothing, so a thread beside the work renews the lease
whenever less than two thirds of it is left. A busy worker therefore adds
no events of its own, and a worker that stops beating (a lost node, a
frozen process) loses the run once its lease runs out.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from uuid import UUID

import structlog
from eventsourcing.persistence import IntegrityError, PersistenceError

from ledger.errors import Superseded
from ledger.run import Run
from ledger.store import Ledger
from ledger.worker import LEASE_SECONDS, lease_until

__all__ = ["Heartbeat"]

log = structlog.get_logger(__name__)


class Heartbeat:
    """Renews one attempt's lease from its own thread until stopped."""

    def __init__(
        self, ledger: Ledger, run_id: UUID, attempt: int, seconds: int = LEASE_SECONDS
    ) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.attempt = attempt
        self.seconds = seconds
        self.interval = max(0.2, seconds / 3)

        # The heartbeat's own copy of the run, brought up to date each beat,
        # and the lease it last saw: kept when the copy is dropped.
        self._run: Run | None = None
        self._lease_until: str | None = None

        # Set once the attempt is no longer the run's open one: the worker
        # learns it on its next append anyway; this says why, sooner.
        self.lost = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._beat_loop, name="ledger-heartbeat", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        # The lease as claimed, before any work: `check` needs it from the
        # first call on, not from the first beat.
        self._run = self.ledger.repository.get(self.run_id)
        self._lease_until = self._run.lease_until
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.interval + 5)

    def check(self) -> None:
        """Raises Superseded when this worker may no longer act for the run:
        another attempt took it, or the lease the heartbeat last saw has run
        out (the process was frozen, or the ledger unreachable, for longer
        than two thirds of a lease). Cheap: reads nothing from the store."""
        if self.lost.is_set():
            raise Superseded(str(self.run_id), self.attempt)
        until = self._lease_until
        if until and datetime.fromisoformat(until) <= datetime.now(UTC):
            raise Superseded(
                str(self.run_id),
                self.attempt,
                f"left without a lease (it ran out at {until})",
            )

    def _beat_loop(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self._beat()
            except PersistenceError as error:
                # One missed beat is harmless: the lease outlasts three.
                log.warning(
                    "lease.renewal_failed",
                    run_id=str(self.run_id),
                    attempt=self.attempt,
                    error=str(error).splitlines()[0] if str(error) else "",
                )
            if self.lost.is_set():
                return

    def _beat(self) -> None:
        if self._run is None:
            self._run = self.ledger.repository.get(self.run_id)
        run: Run = self.ledger.refreshed(self._run)
        self._run = run
        if not run.attempt_open or run.attempt != self.attempt:
            self.lost.set()
            return
        self._lease_until = run.lease_until

        # A batch renewed it lately: nothing to write.
        left = datetime.fromisoformat(run.lease_until) - datetime.now(UTC)
        if left.total_seconds() > self.seconds - self.interval:
            return

        run.renew_lease(self.attempt, lease_until(self.seconds))
        try:
            self.ledger.save(run)
            self._lease_until = run.lease_until
        except IntegrityError:
            # The worker saved first, and renewed the lease with it; the
            # copy holds a renewal that never was: read it again next beat.
            self._run = None
            return
        log.debug("lease.renewed", run_id=str(self.run_id), attempt=self.attempt)
