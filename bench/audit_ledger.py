"""Ninety days of a busy job, as real aggregates record them.

One job, `payments-import`, runs one run after another, every half hour
or so, for 90 days: three steps (`fetch`, `transform`, `load`) of the
same 150-210 batches of 500 records (the load reads what the transform
wrote), a few records quarantined per run, one side effect at the end
(`publish-manifest`, whose first call sometimes fails and is repeated).
Some runs fail and are resumed half an hour later, some after an
operator paused them and lifted the pause; some lose their worker (the
next attempt records the crash, or an operator abandons the attempt
first); some are rerun from `load` hours after they completed; some
quarantined records are discarded or promoted days later.

Every event is triggered on the product's own aggregates (`Run`,
`InputRuns`, `Effect`) through the product's own functions (`pause`,
`rewind`, `discard`, `promote`, ...), so each is exactly what `ledger`
records. Two things differ from a live ledger, both for speed: the
aggregates' clock is a simulated one (so the timestamps spread over 90
days instead of the minutes the generation takes), and the events are
written through the library's event store in transactions of a few
thousand events, in the order of their timestamps, instead of one
transaction per batch.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import CanCreateTimestamp

from ledger.controls import abandon, lift_pause, pause
from ledger.effect import Effect
from ledger.input_runs import InputRuns
from ledger.keys import file_site, idempotency_key
from ledger.quarantine import WRITTEN, PromotionResult, discard, promote
from ledger.rerun import plan_rerun, rewind
from ledger.run import Run
from ledger.store import Ledger

__all__ = ["DAYS", "FIRST_DAY", "JOB", "Generator"]

JOB = "payments-import"
FIRST_DAY = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = 90

# What one run records, on average: about 6 events a batch over three
# steps of ~180 batches, ~70 quarantined records and the rest.
EVENTS_PER_RUN = 1_150
BATCH = 500
STEPS = (("fetch", "api cursor"), ("transform", "row"), ("load", "row"))
OPERATORS = ("olga@ops", "ravi@ops", "mei@payments")
HOSTS = ("etl-1", "etl-2", "etl-3", "etl-4")
FLUSH_EVENTS = 5_000


class Clock:
    """The aggregates' clock while the ledger is made: each event gets the
    simulated time, a microsecond after the one before at least."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def stamp(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now


class Generator:
    """Writes runs of the job, in time order, until `target` events."""

    def __init__(self, ledger: Ledger, target: int, seed: int = 20261205) -> None:
        self.ledger = ledger
        self.target = target
        self.rng = random.Random(seed)
        self.clock = Clock(FIRST_DAY)
        self.buffer: list[Any] = []
        self.events = 0
        self.runs = 0
        self.later: list[tuple[datetime, int, Callable[[], None]]] = []
        self.boot = {host: str(UUID(int=self.rng.getrandbits(128))) for host in HOSTS}

        # The runs spread over DAYS, whatever the target.
        self.interval = DAYS * 86_400 / max(1, target / EVENTS_PER_RUN)

    def write(self, echo: Callable[[str], None] = print) -> None:
        original = CanCreateTimestamp.create_timestamp
        CanCreateTimestamp.create_timestamp = staticmethod(self.clock.stamp)  # type: ignore[method-assign]
        try:
            reported = 0
            number = 0
            while self.events + len(self.buffer) < self.target:
                planned = FIRST_DAY + timedelta(seconds=number * self.interval)
                self._until(planned + timedelta(seconds=self._jitter()))
                self._run(number)
                number += 1
                if self.events - reported >= 250_000:
                    reported = self.events
                    echo(f"  {self.events:>10,} events, {self.runs:,} runs, "
                         f"clock at {self.clock.now:%Y-%m-%d %H:%M}")  # fmt: skip
            self._until(self.clock.now + timedelta(days=4))
            self._flush()
        finally:
            CanCreateTimestamp.create_timestamp = original  # type: ignore[method-assign]

    # Time and order.

    def _jitter(self) -> float:
        return self.rng.uniform(0, 0.1) * self.interval

    def _until(self, moment: datetime) -> None:
        """Lets the clock reach `moment`, doing what was due before it."""
        while self.later and self.later[0][0] <= moment:
            at, _, action = heapq.heappop(self.later)
            self.clock.now = max(self.clock.now, at)
            action()
        self.clock.now = max(self.clock.now, moment)

    def _due(self, seconds: float, action: Callable[[], None]) -> None:
        at = self.clock.now + timedelta(seconds=seconds)
        heapq.heappush(self.later, (at, self.rng.getrandbits(32), action))

    def _keep(self, *aggregates: Any) -> None:
        for aggregate in aggregates:
            self.buffer.extend(aggregate.collect_events())
        if len(self.buffer) >= FLUSH_EVENTS:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            self.ledger.events.put(self.buffer)
            self.events += len(self.buffer)
            self.buffer = []

    # One run.

    def _worker(self) -> dict[str, Any]:
        host = self.rng.choice(HOSTS)
        return {
            "host": host,
            "boot_id": self.boot[host],
            "pid": self.rng.randint(2_000, 90_000),
            "pid_started": str(self.rng.randint(10_000, 90_000_000)),
        }

    def _lease(self) -> str:
        return (self.clock.now + timedelta(seconds=300)).isoformat()

    def _run(self, number: int) -> None:
        rng = self.rng
        day = self.clock.now.date().isoformat()
        sha = f"{rng.getrandbits(256):064x}"
        batches = [rng.randint(150, 210)] * len(STEPS)
        run = Run.start(
            run_id=UUID(int=rng.getrandbits(128), version=4),
            job=JOB,
            job_version="3.2.0",
            job_ref="/srv/jobs/payments_import.py",
            input={
                "name": f"payments-{day}-{number:05d}.csv",
                "path": f"/srv/spool/payments/payments-{day}-{number:05d}.csv",
                "size": batches[0] * BATCH * 180 + rng.randint(0, 9_999),
                "sha256": sha,
            },
            params={"batch_size": BATCH, "max_quarantine_ratio": 0.2,
                    "region": "eu-west", "ledger_account": "settlements"},
            input_key=f"{rng.getrandbits(256):064x}",
            steps=[name for name, _ in STEPS],
        )  # fmt: skip
        index = InputRuns.create(JOB, run.input_key)
        index.add_run(run.id)
        self._keep(run, index)
        self.runs += 1

        # How its first attempt ends: mostly well.
        draw = rng.random()
        stop = None
        if draw < 0.08:
            stop = ("failed", rng.randrange(3), rng.randrange(150))
        elif draw < 0.10:
            stop = ("crashed", rng.randrange(3), rng.randrange(150))
        while not run.is_completed:
            self._attempt(run, batches, stop, sha)
            stop = None
        self._later_decisions(run, batches)

    def _attempt(
        self,
        run: Run,
        batches: list[int],
        stop: tuple[str, int, int] | None,
        sha: str | None,
    ) -> None:
        """One attempt through the steps left; `stop` ends it early, and
        the manifest is published (when `sha` is given) at the end."""
        rng = self.rng
        attempt = run.start_attempt(self._worker(), self._lease())
        self._keep(run)
        for ordinal, (name, kind) in enumerate(STEPS):
            if name in run.completed_steps:
                continue
            run.start_step(attempt, name)
            for batch in range(run.batches_done.get(name, 0), batches[ordinal]):
                self.clock.advance(rng.uniform(1.2, 2.6))
                first = batch * BATCH + 1
                run.start_batch(attempt, name, batch, first, self._lease())
                if stop is not None and stop[1:] == (ordinal, batch):
                    self._stop(run, attempt, name, batch, stop[0])
                    return
                if rng.random() < 0.01:
                    # A slow batch: the heartbeat renews the lease.
                    self.clock.advance(rng.uniform(100, 160))
                    run.renew_lease(attempt, self._lease())
                self._batch(run, attempt, name, kind, batch, first)
                self._keep(run)
            run.complete_step(attempt, name)
        if sha is not None:
            self._effect(run, attempt, sha, batches[-1] * BATCH)
        run.complete(attempt, dict(run.totals))
        self._keep(run)

    def _batch(
        self, run: Run, attempt: int, step: str, kind: str, batch: int, first: int
    ) -> None:
        last = first + BATCH - 1
        held = 0
        if step == "transform" and self.rng.random() < 0.25:
            for record in sorted(self.rng.sample(range(first, last + 1), 2)):
                bad = self.rng.choice(("invalid_amount", "unknown_account"))
                detail = (
                    f"amount '{self.rng.randint(1, 999)},{self.rng.randint(0, 99)}O'"
                    " is not a number"
                    if bad == "invalid_amount"
                    else f"account DE{self.rng.getrandbits(60):018d} is not in "
                    "the ledger's chart"
                )
                payload = {"id": f"P{record:09d}", "amount": "12,5O", "cur": "EUR"}
                run.quarantine(attempt, step, batch, record, bad, detail, payload)
                held += 1
        position = 9_000_000 + last * 7 if step == "fetch" else last

        # The load reads what the transform wrote: its batch, less the
        # records the transform quarantined.
        records = BATCH
        if step == "load":
            records = run.batch_log["transform"][batch]["written"]
        run.checkpoint_batch(
            attempt=attempt, step=step, batch=batch, first_record=first,
            last_record=last, position=position, position_kind=kind,
            records=records, written=records - held, quarantined=held,
            counters={"duplicates": self.rng.randint(0, 3)} if step == "load" else {},
            lease_until=self._lease(),
        )  # fmt: skip

    def _stop(self, run: Run, attempt: int, step: str, batch: int, how: str) -> None:
        """The attempt ends in this batch; what follows until the next one."""
        rng = self.rng
        if how == "failed":
            error = rng.choice(
                [("OperationalError", "could not connect to the payments API"),
                 ("ValueError", "header row changed: 'amount_eur' is missing")]
            )  # fmt: skip
            run.fail(attempt, step, batch, *error)
            self._keep(run)
            if rng.random() < 0.3:
                self.clock.advance(rng.uniform(60, 300))
                pause(run, rng.choice(OPERATORS), "hold until the vendor confirms")
                self._keep(run)
                self.clock.advance(rng.uniform(600, 2400))
                lift_pause(run, rng.choice(OPERATORS), "vendor fixed the export")
                self._keep(run)
            self.clock.advance(rng.uniform(300, 1800))
            return

        # A lost worker records nothing: silence until someone notices.
        self._keep(run)
        self.clock.advance(rng.uniform(600, 2400))
        if rng.random() < 0.3:
            abandon(run, rng.choice(OPERATORS), "etl host lost power; not coming back")
        else:
            gone = run.worker
            run.record_crash(
                f"pid {gone['pid']} on host {gone['host']} is gone",
                detected_by=self._worker(),
            )
        self._keep(run)

    def _effect(self, run: Run, attempt: int, sha: str, record: int) -> None:
        """The manifest published once the load is done; sometimes its
        first call fails and is made again."""
        key = idempotency_key(
            file_site(run.id, sha, "load"), ("record", record), "publish-manifest"
        )
        actor = f"attempt {attempt}"
        effect = Effect.intend(
            key, run_id=run.id, name="publish-manifest", step="load",
            record=["record", record], part="", honours_keys=True,
            attempt=attempt, actor=actor,
        )  # fmt: skip
        if self.rng.random() < 0.02:
            effect.fail(
                run.id, attempt, actor, TimeoutError("manifest API timed out"),
                outcome_known=False,
            )  # fmt: skip
            self.clock.advance(2)
            effect.repeat(run.id, attempt, actor, "unknown outcome")
        effect.complete(run.id, attempt, actor, {"manifest": str(key)[:8]}, True)
        self._keep(effect)

    def _later_decisions(self, run: Run, batches: list[int]) -> None:
        """Decisions taken hours or days after the run ended."""
        rng = self.rng
        pending = [
            q for q, state in run.quarantine_states.items() if state == "pending"
        ]
        if pending and rng.random() < 0.05:
            chosen = rng.choice(pending)
            self._due(
                rng.uniform(86_400, 3 * 86_400), lambda: self._discard(run, chosen)
            )
        elif pending and rng.random() < 0.03:
            chosen = rng.choice(pending)
            self._due(
                rng.uniform(86_400, 2 * 86_400), lambda: self._promote(run, chosen)
            )
        if rng.random() < 0.01:
            self._due(rng.uniform(7_200, 21_600), lambda: self._rerun(run, batches))

    def _discard(self, run: Run, quarantine_id: str) -> None:
        discard(run, quarantine_id, self.rng.choice(OPERATORS), "duplicate of P-refund")
        self._keep(run)

    def _promote(self, run: Run, quarantine_id: str) -> None:
        result = PromotionResult(outcome=WRITTEN, step="load", written=1)
        promote(
            run, quarantine_id, self.rng.choice(OPERATORS), "fixed upstream", result
        )
        self._keep(run)

    def _rerun(self, run: Run, batches: list[int]) -> None:
        """The load redone: its manifest was published already, so the
        replayed effect returns its recorded result without a call."""
        plan = plan_rerun(run, "load", 0)
        rewind(run, plan, self.rng.choice(OPERATORS), "warehouse restored from backup")
        self._keep(run)
        self._attempt(run, batches, None, None)
