"""Attacks on replay-safe effects through the real CLI: what a replay calls.

The effects-attack job sends one call per line to a downstream that logs
every call (`KEY LINE pid=PID`); its `mode` parameter picks the trick
(see tests/jobs/effects_attack_job.py) and ATTACK_HONOURS its declared
policy. Each test states the promise it holds the ledger to.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import REPO, ledger_command

ATTACK_JOB = REPO / "tests" / "jobs" / "effects_attack_job.py"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line {n}\n" for n in range(1, 26)))
    return path


def run_attack(
    url: str,
    tmp_path: Path,
    source: Path,
    mode: str,
    *,
    honours: bool = False,
    fault: str | None = None,
    extra: tuple[str, ...] = (),
) -> Any:
    env = {"ATTACK_HONOURS": "1" if honours else "0"}
    if fault:
        env["LEDGER_FAULT"] = fault
    return ledger_command(
        [
            "run", str(ATTACK_JOB), "--input", str(source), "--batch-size", "10",
            "--param", f"calls={tmp_path / 'calls.log'}", "--param", f"mode={mode}",
            *extra, "--no-progress",
        ],
        url=url, cwd=tmp_path, env=env,
    )  # fmt: skip


def cli(args: list[str], url: str, cwd: Path) -> Any:
    """A `ledger` command in the environment the runs had: a promotion
    loads the job, whose policy comes from ATTACK_HONOURS."""
    return ledger_command(args, url=url, cwd=cwd, env={"ATTACK_HONOURS": "0"})


def sent_lines(tmp_path: Path) -> Counter[str]:
    """How often each line reached the downstream."""
    path = tmp_path / "calls.log"
    if not path.exists():
        return Counter()
    return Counter(
        row.split(" ", 1)[1].rsplit(" pid=", 1)[0]
        for row in path.read_text().splitlines()
    )


def only_run(url: str, tmp_path: Path) -> str:
    shown = cli(["status", "effects-attack", "--json"], url, tmp_path)
    assert shown.returncode == 0, shown.stderr
    runs = orjson.loads(shown.stdout)
    assert len(runs) == 1
    return str(runs[0]["run_id"])


def effects_of(url: str, tmp_path: Path, run_id: str, *args: str) -> dict[str, Any]:
    shown = cli(["effects", run_id, *args, "--json"], url, tmp_path)
    assert shown.returncode == 0, shown.stderr
    listing: dict[str, Any] = orjson.loads(shown.stdout)
    return listing


def uncertain_key(url: str, tmp_path: Path, run_id: str) -> str:
    listing = effects_of(url, tmp_path, run_id, "--state", "uncertain")
    assert len(listing["effects"]) == 1, listing
    return str(listing["effects"][0]["key"])


def test_an_unknown_outcome_is_not_repeated_once_the_downstream_is_declared_plain(
    sqlite_url: str, tmp_path: Path, source: Path
) -> None:
    # Attempt 1 declares that the downstream honours keys; record 3's call
    # lands, then times out (EffectOutcomeUnknown): the run fails.
    failed = run_attack(
        sqlite_url,
        tmp_path,
        source,
        "unknown",
        honours=True,
        extra=("--param", "target=3"),
    )
    assert failed.returncode == 1, failed.stderr
    assert "EffectOutcomeUnknown" in failed.stderr
    assert sent_lines(tmp_path)["line 3"] == 1

    # The operator learns the downstream does not honour keys and fixes the
    # declaration; the downstream now answers normally.
    (tmp_path / "unknown.done").write_text("")
    resumed = run_attack(
        sqlite_url, tmp_path, source, "unknown", extra=("--param", "target=3")
    )
    assert resumed.returncode == 0, resumed.stderr

    # Record 3 may have happened: on a downstream without keys it must wait
    # for a decision, never be sent again silently.
    run_id = only_run(sqlite_url, tmp_path)
    uncertain = effects_of(sqlite_url, tmp_path, run_id, "--state", "uncertain")
    assert sent_lines(tmp_path)["line 3"] == 1, (
        "record 3 was sent twice to a downstream declared without keys; "
        f"uncertain effects listed: {uncertain['counts']['uncertain']}"
    )


def test_a_retry_the_run_can_never_reach_says_so(
    sqlite_url: str, tmp_path: Path, source: Path
) -> None:
    # Record 13's worker dies after its intent; the next attempt's handler
    # catches EffectUncertain and goes on, so the run completes.
    killed = run_attack(
        sqlite_url, tmp_path, source, "swallow", fault="after_intent:send:1:3"
    )
    assert killed.returncode == -9, killed.stderr
    finished = run_attack(sqlite_url, tmp_path, source, "swallow")
    assert finished.returncode == 0, finished.stderr
    run_id = only_run(sqlite_url, tmp_path)
    key = uncertain_key(sqlite_url, tmp_path, run_id)
    assert "line 13" not in sent_lines(tmp_path)

    # The run has an effect waiting for a decision: explain must say so.
    explained = cli(["explain", run_id], sqlite_url, tmp_path)
    assert explained.returncode == 0, explained.stderr
    explained_uncertain = "uncertain" in explained.stdout

    # The operator checked: it did not happen. The command names how it
    # will be called again; following that advice must work.
    retried = cli(
        ["effects", "retry", key, "--reason", "not in the vendor log"],
        sqlite_url, tmp_path,
    )  # fmt: skip
    assert retried.returncode == 0, retried.stderr
    resumed = cli(["resume", run_id[:8], "--no-progress"], sqlite_url, tmp_path)
    promised_resume = f"ledger resume {run_id[:8]}" in retried.stdout
    assert explained_uncertain, explained.stdout
    assert not promised_resume or resumed.returncode == 0, (
        f"{retried.stdout.strip()} / then: {resumed.stderr.strip()}"
    )


def test_an_effect_uncertain_again_after_a_retry_shows_no_old_decision(
    sqlite_url: str, tmp_path: Path, source: Path
) -> None:
    target = ("--param", "target=13")

    # Record 13 dies after its intent, is held on the resume, and retried;
    # the retried call times out after sending: uncertain again.
    killed = run_attack(
        sqlite_url, tmp_path, source, "unknown", fault="after_intent:send:1:3",
        extra=target,
    )  # fmt: skip
    assert killed.returncode == -9
    finished = run_attack(sqlite_url, tmp_path, source, "unknown", extra=target)
    assert finished.returncode == 0, finished.stderr
    run_id = only_run(sqlite_url, tmp_path)
    key = uncertain_key(sqlite_url, tmp_path, run_id)
    retried = cli(
        ["effects", "retry", key, "--reason", "not in the vendor log", "--as", "olga"],
        sqlite_url, tmp_path,
    )  # fmt: skip
    assert retried.returncode == 0, retried.stderr
    assert "stays in quarantine" in retried.stdout

    # It waits for a new decision, so none may be shown as its own.
    effect = effects_of(sqlite_url, tmp_path, run_id, "--state", "uncertain")
    assert [e["key"] for e in effect["effects"]] == [key]
    listed = cli(["effects", run_id[:8]], sqlite_url, tmp_path)
    assert "EffectOutcomeUnknown" in listed.stdout, listed.stdout
    assert effect["effects"][0]["decision"] is None


def test_an_uncertain_effect_made_in_write_fails_the_run_then_resumes_once_decided(
    ledger_url: str, tmp_path: Path, source: Path
) -> None:
    # A batch-level effect (made in write) of record 13 dies after its call.
    killed = run_attack(
        ledger_url, tmp_path, source, "write", fault="after_effect:send:1:3"
    )
    assert killed.returncode == -9

    # The resume cannot quarantine one record of a write: it fails the run,
    # in one line naming the effect and the decision.
    failed = run_attack(ledger_url, tmp_path, source, "write")
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    run_id = only_run(ledger_url, tmp_path)
    key = uncertain_key(ledger_url, tmp_path, run_id)
    assert f"ledger effects confirm {key}" in lines[0]
    assert f"ledger resume {run_id[:8]}" in lines[0]

    # Confirmed, the resume finishes without sending record 13 again.
    confirmed = cli(
        ["effects", "confirm", key[:8], "--reason", "in the vendor log"],
        ledger_url, tmp_path,
    )  # fmt: skip
    assert confirmed.returncode == 0, confirmed.stderr
    resumed = cli(["resume", run_id[:8], "--no-progress"], ledger_url, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    sent = sent_lines(tmp_path)
    assert set(sent) == {f"line {n}" for n in range(1, 26)}
    assert max(sent.values()) == 1
    listing = effects_of(ledger_url, tmp_path, run_id)
    assert listing["counts"]["completed"] == 25


def test_an_unreadable_reason_is_one_clear_line_and_decides_nothing(
    sqlite_url: str, tmp_path: Path, source: Path
) -> None:
    killed = run_attack(
        sqlite_url, tmp_path, source, "plain", fault="after_intent:send:1:3"
    )
    assert killed.returncode == -9
    finished = run_attack(sqlite_url, tmp_path, source, "plain")
    assert finished.returncode == 0, finished.stderr
    run_id = only_run(sqlite_url, tmp_path)
    key = uncertain_key(sqlite_url, tmp_path, run_id)

    # A reason with a byte that is not UTF-8 (a mangled paste): argv holds
    # it as a lone surrogate, which JSON cannot encode.
    confirmed = cli(
        ["effects", "confirm", key, "--reason", "checked \udcff log"],
        sqlite_url, tmp_path,
    )  # fmt: skip
    assert "Traceback" not in confirmed.stderr, confirmed.stderr[-300:]
    assert confirmed.returncode == 2
    assert len(confirmed.stderr.strip().splitlines()) == 1
    assert uncertain_key(sqlite_url, tmp_path, run_id) == key


def test_a_second_call_of_one_effect_for_one_record_is_not_silently_dropped(
    sqlite_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "lines.txt"
    source.write_text("line 1\nline 2\nline 3\n")

    # Each record's handler sends "first", then "second", as `send`.
    ran = run_attack(sqlite_url, tmp_path, source, "twice")
    sent = sent_lines(tmp_path)

    # Both reach the downstream, or the run says which argument is missing.
    refused = ran.returncode != 0 and "part" in ran.stderr
    assert refused or sent["line 1 second"] == 1, (
        f"exit {ran.returncode}, sent {sorted(sent)}; stderr: {ran.stderr.strip()}"
    )
