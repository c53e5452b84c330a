"""Kill -9 a job that makes effects, at random points, until it completes.

The job (tests/jobs/invoices.py) charges every invoice on a service that
honours idempotency keys and notifies on one that does not: two HTTP
services on 127.0.0.1 (tests/effect_service.py) that count every call by
key and by record. Each run kills the job with SIGKILL one to three times,
at a failpoint (after an effect's intent, after its call and before its
outcome is recorded, inside a batch, between write and checkpoint, inside
or after the checkpoint) or from outside, once a service has seen a drawn
number of calls. It then resumes the run until it completes and resolves
each uncertain effect as an operator would: asks the service whether it saw
the key, and confirms or retries, which promotes the record held for it.

What must hold: the honouring service applied every record's key exactly
once; the other applied every record exactly once; every call a service
saw is a call the ledger counted, so a repeat is never silent. The draws
are seeded: the seed is printed, and LEDGER_KILL_SEED draws others. (A run
with a kill from outside may draw its later kills differently on a replay:
where that kill landed decides which batches are left to draw from.)
Run with `-s` for the summary table.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest
from conftest import LEDGER, REPO, ledger_command, wait_until
from effect_service import EffectService, ServiceCounts, effect_service

from ledger.config import parse_ledger_url
from ledger.effect import AFTER_CRASH, COMPLETED, UNCERTAIN, Effect
from ledger.keys import file_site, idempotency_key
from ledger.run import Run
from ledger.store import opened

pytestmark = pytest.mark.slow

INVOICES_JOB = REPO / "tests" / "jobs" / "invoices.py"
RECORDS = 30
BATCH = 5
BATCHES = RECORDS // BATCH
RUNS_PER_STORE = 12
SEED = int(os.environ.get("LEDGER_KILL_SEED", "20261209"))

EFFECT_POINTS = ("after_intent", "after_effect")
BATCH_POINTS = ("in_batch", "after_write", "in_checkpoint", "after_checkpoint")
KILLS = (*EFFECT_POINTS, *BATCH_POINTS, "outside")

# The first kill of run i is FIRST_KILLS[i % 8], so that every store sees
# every kind; later kills are drawn.
FIRST_KILLS = (*KILLS, "outside")


@dataclass
class Tally:
    """What one run went through, for the summary table."""

    store: str
    run: int
    kills: list[str] = field(default_factory=list)
    charge: ServiceCounts = field(default_factory=ServiceCounts)
    notify: ServiceCounts = field(default_factory=ServiceCounts)
    repeated_after_crash: int = 0
    uncertain: int = 0
    confirmed: int = 0
    retried: int = 0


TALLIES: list[Tally] = []


COLUMNS = [
    "kills", "charge calls", "charge dup", "charge applied twice", "notify calls",
    "notify dup", "repeated after crash", "uncertain", "confirmed", "retried",
]  # fmt: skip


def _counts(t: Tally) -> list[int]:
    return [
        len(t.kills), t.charge.calls, t.charge.duplicates, t.charge.applied_twice,
        t.notify.calls, t.notify.duplicates, t.repeated_after_crash, t.uncertain,
        t.confirmed, t.retried,
    ]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def summary_table() -> Iterator[None]:
    """Prints, after the module, a table of every run, then the totals."""
    yield
    if not TALLIES:
        return
    print(f"\n\nEffect kill runs: LEDGER_KILL_SEED={SEED}, {RECORDS} records in")
    print(f"batches of {BATCH}; calls and duplicates as each service saw them\n")
    print("| store | run | " + " | ".join(COLUMNS) + " | where the kills landed |")
    print("|" + "---|" * (len(COLUMNS) + 3))
    for t in sorted(TALLIES, key=lambda t: (t.store, t.run)):
        counts = " | ".join(str(n) for n in _counts(t))
        print(f"| {t.store} | {t.run} | {counts} | {', '.join(t.kills)} |")
    totals = [sum(column) for column in zip(*map(_counts, TALLIES), strict=True)]
    named = ", ".join(f"{n} {name}" for name, n in zip(COLUMNS, totals, strict=True))
    print(f"\nTotal over {len(TALLIES)} runs: {named}")


class InvoiceRun:
    """One ledger, one input, the two services: the job run after run."""

    def __init__(
        self, url: str, folder: Path, charge: EffectService, notify: EffectService
    ) -> None:
        self.url = url
        self.folder = folder
        self.charge = charge
        self.notify = notify
        self.source = folder / "invoices.txt"
        self.amounts = {n: 1000 + 7 * n for n in range(1, RECORDS + 1)}
        self.source.write_text("".join(f"{a}\n" for a in self.amounts.values()))
        self.output = folder / "out.sqlite"
        self.run_id = ""

    def args(self) -> list[str]:
        return [
            "run", str(INVOICES_JOB), "--input", str(self.source),
            "--batch-size", str(BATCH), "--param", f"output={self.output}",
            "--param", f"charge_url={self.charge.url}",
            "--param", f"notify_url={self.notify.url}", "--no-progress", "--json",
        ]  # fmt: skip

    def run(self, fault: str = "") -> subprocess.CompletedProcess[str]:
        done: subprocess.CompletedProcess[str] = ledger_command(
            self.args(), url=self.url, cwd=self.folder,
            env={"LEDGER_FAULT": fault}, timeout=120,
        )  # fmt: skip
        return done

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "LEDGER_URL": self.url, "LEDGER_FAULT": ""}
        with (self.folder / "outside.log").open("ab") as log:
            return subprocess.Popen(
                [*LEDGER, *self.args()], cwd=self.folder, env=env,
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    def progress(self) -> tuple[dict[str, int], bool]:
        """Batches checkpointed per step, and whether the run completed."""
        with opened(parse_ledger_url(self.url)) as ledger:
            if not self.run_id:
                started = [
                    n.originator_id
                    for n in ledger.recorder.select_notifications(start=1, limit=10**6)
                    if n.topic == "ledger.run:Run.Started"
                ]
                if not started:
                    return {}, False
                (only,) = started
                self.run_id = str(only)
            run: Run = ledger.repository.get(UUID(self.run_id))
            return dict(run.batches_done), bool(run.is_completed)

    def keys(self, effect: str) -> dict[int, str]:
        """Each record's key for `effect`, derived as the ledger derives it."""
        sha256 = hashlib.sha256(self.source.read_bytes()).hexdigest()
        site = file_site(UUID(self.run_id), sha256, "bill")
        return {
            n: str(idempotency_key(site, ("record", n), effect)) for n in self.amounts
        }

    def ledger(self, *args: str) -> subprocess.CompletedProcess[str]:
        done: subprocess.CompletedProcess[str] = ledger_command(
            list(args), url=self.url, cwd=self.folder
        )
        return done


def _kill_at_failpoint(job: InvoiceRun, point: str, draw: random.Random) -> str:
    """Runs the job armed to die at `point` in a not yet checkpointed batch;
    the failpoint, or "" when the run completed without passing it."""
    done, _ = job.progress()
    if done.get("bill", 0) >= BATCHES:
        step = "archive"
        point = point if point in BATCH_POINTS else "in_batch"
    elif point in EFFECT_POINTS or draw.random() < 0.75:
        step = "bill"
    else:
        step = "archive"
    batch = draw.randint(done.get(step, 0), BATCHES - 1)
    nth = draw.randint(1, 2 * BATCH) if point in EFFECT_POINTS else 1
    fault = f"{point}:{step}:{batch}:{nth}"
    finished = job.run(fault)
    assert finished.returncode in (0, -signal.SIGKILL), finished.stderr
    return fault if finished.returncode == -signal.SIGKILL else ""


def _kill_from_outside(job: InvoiceRun, draw: random.Random) -> str:
    """Starts the job and kills it once a drawn service has seen a drawn
    number of calls more; "" when the run completed first."""
    name, service = draw.choice([("charge", job.charge), ("notify", job.notify)])
    done, _ = job.progress()
    left = RECORDS - BATCH * done.get("bill", 0)
    target = service.calls() + draw.randint(1, max(1, left - 1))
    process = job.start()
    deadline = time.monotonic() + 120
    try:
        # Woken by the call itself, so the kill follows it closely.
        while not service.wait_for_calls(target, timeout=0.05):
            if process.poll() is not None:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the job never made {name} call {target}")
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    finally:
        code = process.wait(timeout=60)
    assert code in (0, -signal.SIGKILL), (job.folder / "outside.log").read_text()
    return f"outside@{name}#{target}" if code == -signal.SIGKILL else ""


def _stored_effects(job: InvoiceRun) -> dict[str, dict[str, Any]]:
    """Each effect of the run as its stream tells it, read from the store."""
    with opened(parse_ledger_url(job.url)) as ledger:
        events: dict[UUID, list[str]] = defaultdict(list)
        for n in ledger.recorder.select_notifications(start=1, limit=10**6):
            if n.topic.startswith("ledger.effect:Effect."):
                events[UUID(str(n.originator_id))].append(n.topic.rsplit(".", 1)[-1])
        effects: dict[str, dict[str, Any]] = {}
        for key, names in events.items():
            effect: Effect = ledger.repository.get(key)
            assert effect.run_id == job.run_id
            effects[str(key)] = {
                "name": effect.name,
                "record": effect.record,
                "state": effect.state,
                "calls": effect.calls,
                "repeated_after_crash": effect.repeats.get(AFTER_CRASH, 0),
                "held": "Held" in names,
                "confirmed": "Confirmed" in names,
                "released": "Released" in names,
            }
    return effects


def _effects_listed(job: InvoiceRun) -> dict[str, dict[str, Any]]:
    """`ledger effects RUN --json`, by key; its counts match its list."""
    shown = job.ledger("effects", job.run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    listing = orjson.loads(shown.stdout)
    assert listing["run_id"] == job.run_id
    effects = {e["key"]: e for e in listing["effects"]}
    by_state: dict[str, int] = defaultdict(int)
    for effect in effects.values():
        by_state[effect["state"]] += 1
    for state, count in by_state.items():
        assert listing["counts"].get(state, 0) == count, listing["counts"]
    repeated = sum(e["repeated_after_crash"] for e in effects.values())
    assert listing["counts"]["repeated_after_crash"] == repeated
    assert listing["counts"]["calls"] == sum(e["calls"] for e in effects.values())
    return effects


def _resolve_uncertain(job: InvoiceRun, tally: Tally) -> None:
    """What an operator does: for each uncertain effect, ask the downstream
    whether it saw the key, and decide; the decision promotes the record
    that waits for it."""
    wait_until(
        lambda: job.charge.idle() and job.notify.idle(),
        "the services to finish counting the calls they received",
    )
    seen = job.notify.counts()
    listed = _effects_listed(job)
    uncertain = [e for e in listed.values() if e["state"] == UNCERTAIN]
    for effect in uncertain:
        # Only a downstream without keys leaves an effect uncertain.
        assert effect["name"] == "notify", effect
        key = effect["key"]
        assert seen.calls_by_key[key] == seen.calls_by_record[effect["record"][-1]]
        happened = seen.calls_by_key[key] > 0
        decided = job.ledger(
            "effects", "confirm" if happened else "retry", key, "--json",
            "--reason", "checked the mail service's log for the key",
        )  # fmt: skip
        assert decided.returncode == 0, decided.stderr
        promoted = orjson.loads(decided.stdout)["promoted"]
        assert promoted is not None, decided.stdout
        assert promoted["outcome"] == "written", promoted
        tally.confirmed += happened
        tally.retried += not happened


def _finish(job: InvoiceRun) -> None:
    """Resumes the run until it completes."""
    _, completed = job.progress()
    if not completed:
        resumed = job.ledger("resume", job.run_id, "--no-progress", "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert orjson.loads(resumed.stdout)["status"] == "completed"


def _assert_applied_once(job: InvoiceRun, tally: Tally) -> None:
    charge, notify = job.charge.counts(), job.notify.counts()
    stored = _stored_effects(job)
    listed = _effects_listed(job)
    charge_keys, notify_keys = job.keys("charge"), job.keys("notify")

    # The ledger's list is the store's, and every effect completed.
    assert set(listed) == set(stored) == {*charge_keys.values(), *notify_keys.values()}
    for key, effect in stored.items():
        shown = listed[key]
        assert shown["state"] == effect["state"] == COMPLETED, (key, shown)
        assert shown["calls"] == effect["calls"], (key, shown, effect)
        assert shown["repeated_after_crash"] == effect["repeated_after_crash"]
        decided = effect["confirmed"] or effect["released"]
        assert (shown["decision"] is not None) == decided, (key, shown)

    # The honouring service applied each record's key exactly once, and
    # every call it saw is one the ledger counted: repeats are not silent.
    assert charge.applied_by_key == {key: 1 for key in charge_keys.values()}
    assert charge.applied_by_record == {n: 1 for n in charge_keys}
    for key in charge_keys.values():
        assert charge.calls_by_key[key] <= stored[key]["calls"], key
        assert stored[key]["calls"] == 1 + stored[key]["repeated_after_crash"]

    # The other applied each record exactly once: the operator decided
    # each uncertain effect right. A second call of a key happened only
    # on an operator's retry of an uncertain effect.
    assert notify.applied_by_record == {n: 1 for n in notify_keys}
    for key in notify_keys.values():
        effect = stored[key]
        assert notify.calls_by_key[key] <= effect["calls"], key
        assert effect["repeated_after_crash"] == 0, key
        if effect["calls"] > 1:
            assert effect["held"], (key, effect)
            assert effect["released"], (key, effect)

    # The output holds every invoice, with the charge's first answer.
    with sqlite3.connect(job.output) as db:
        rows = db.execute("SELECT invoice, amount, charge FROM invoices").fetchall()
    assert sorted((n, a, orjson.loads(c)) for n, a, c in rows) == [
        (n, amount, charge.answers[charge_keys[n]]) for n, amount in job.amounts.items()
    ]

    # Nothing waits in quarantine.
    pending = job.ledger("quarantine", "list", "--run", job.run_id, "--json")
    assert pending.returncode == 0, pending.stderr
    assert orjson.loads(pending.stdout)["records"] == []

    tally.charge, tally.notify = charge, notify
    tally.repeated_after_crash = sum(e["repeated_after_crash"] for e in stored.values())
    tally.uncertain = sum(e["held"] for e in stored.values())


@pytest.mark.parametrize("run", range(RUNS_PER_STORE))
def test_kills_leave_each_effect_applied_once(
    ledger_url: str, run: int, tmp_path: Path
) -> None:
    store = "sqlite" if ledger_url.startswith("sqlite") else "postgres"
    draw = random.Random(f"{SEED}/{store}/{run}")
    planned = [FIRST_KILLS[run % len(FIRST_KILLS)]]
    planned += [draw.choice(KILLS) for _ in range(draw.randint(0, 2))]
    print(f"\n[{store} run {run}] LEDGER_KILL_SEED={SEED} planned kills: {planned}")
    tally = Tally(store, run)

    with (
        effect_service(honours_keys=True) as charge,
        effect_service(honours_keys=False) as notify,
    ):
        job = InvoiceRun(ledger_url, tmp_path, charge, notify)
        for kill in planned:
            if job.progress()[1]:
                break
            if kill == "outside":
                landed = _kill_from_outside(job, draw)
            else:
                landed = _kill_at_failpoint(job, kill, draw)
            if landed:
                tally.kills.append(landed)

        # The first kill always lands: a fresh run passes every point.
        assert tally.kills, f"no kill landed of {planned}"
        _finish(job)
        _resolve_uncertain(job, tally)
        _assert_applied_once(job, tally)
    TALLIES.append(tally)
    print(f"[{store} run {run}] kills: {tally.kills}")


@pytest.mark.parametrize(
    ("fault", "decision"),
    [("after_effect:bill:1:2", "retry"), ("after_intent:bill:1:2", "confirm")],
    ids=["retry-what-happened", "confirm-what-did-not"],
)
def test_a_wrong_decision_shows_in_the_ledger(
    ledger_url: str, fault: str, decision: str, tmp_path: Path
) -> None:
    """An operator who decides without checking the downstream: a retry of
    a call that landed applies it twice, a confirmation of one that did not
    leaves it missing. Either way the ledger's account matches what the
    service saw: the key was uncertain, then decided, and called as often."""
    with (
        effect_service(honours_keys=True) as charge,
        effect_service(honours_keys=False) as notify,
    ):
        job = InvoiceRun(ledger_url, tmp_path, charge, notify)

        # Record 6's notify is the second effect of batch 1.
        killed = job.run(fault)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        job.progress()
        _finish(job)
        key = job.keys("notify")[6]
        assert _effects_listed(job)[key]["state"] == UNCERTAIN
        landed = fault.startswith("after_effect")
        wait_until(notify.idle, "the notify service to finish counting")
        assert notify.counts().calls_by_key[key] == int(landed)

        decided = job.ledger(
            "effects", decision, key, "--json", "--reason", "did not check"
        )
        assert decided.returncode == 0, decided.stderr
        assert orjson.loads(decided.stdout)["promoted"]["outcome"] == "written"

        # The service applied record 6 twice, or never; every other once.
        seen = notify.counts()
        expected = {n: 1 for n in job.amounts if n != 6}
        if decision == "retry":
            expected[6] = 2
        assert seen.applied_by_record == expected

        # The ledger counts the calls the service saw, and the decision.
        shown = _effects_listed(job)[key]
        stored = _stored_effects(job)[key]
        assert shown["state"] == COMPLETED
        assert shown["calls"] == stored["calls"] == 1 + (decision == "retry")
        assert seen.calls_by_key[key] == shown["calls"] - (not landed)
        assert shown["decision"] is not None
        assert stored["held"]
        assert stored["released" if decision == "retry" else "confirmed"]
