"""Effects through the real CLI, on both stores: what a replay calls again.

The notify job sends one call per line to a downstream that logs every
call (`KEY LINE`). A worker killed between a call and its outcome's record
leaves an intent with no outcome: on a downstream that honours keys the
resume calls it again with the same key and counts it as repeated after a
crash; on one that does not, the resume does not call it, quarantines the
record, and the effect waits for one operator decision.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import REPO, ledger_command

NOTIFY_JOB = REPO / "tests" / "jobs" / "notify.py"


def _calls(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [
        (key, line)
        for key, line in (row.split(" ", 1) for row in path.read_text().splitlines())
    ]


def _run(
    url: str, tmp_path: Path, source: Path, effect: str, fault: str | None = None
) -> Any:
    return ledger_command(
        [
            "run", str(NOTIFY_JOB), "--input", str(source), "--batch-size", "10",
            "--param", f"calls={tmp_path / 'calls.log'}", "--param", f"effect={effect}",
            "--no-progress",
        ],
        url=url, cwd=tmp_path, env={"LEDGER_FAULT": fault} if fault else {},
    )  # fmt: skip


def _effects(url: str, tmp_path: Path, run_id: str, *args: str) -> dict[str, Any]:
    shown = ledger_command(["effects", run_id, *args, "--json"], url=url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    listing: dict[str, Any] = orjson.loads(shown.stdout)
    return listing


def _only_run(url: str, tmp_path: Path) -> str:
    shown = ledger_command(["status", "notify", "--json"], url=url, cwd=tmp_path)
    runs = orjson.loads(shown.stdout)
    assert len(runs) == 1
    return str(runs[0]["run_id"])


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line {n}\n" for n in range(1, 26)))
    return path


def test_a_crash_after_the_call_repeats_it_with_the_same_key(
    ledger_url: str, tmp_path: Path, source: Path
) -> None:
    # Killed right after the 3rd call of batch 1 (records 11-20), before
    # any outcome of that batch was recorded.
    killed = _run(ledger_url, tmp_path, source, "notify", "after_effect:send:1:3")
    assert killed.returncode == -9
    first = _calls(tmp_path / "calls.log")
    assert [line for _, line in first] == [f"line {n}" for n in range(1, 14)]

    resumed = _run(ledger_url, tmp_path, source, "notify")
    assert resumed.returncode == 0, resumed.stderr
    calls = _calls(tmp_path / "calls.log")

    # Records 11-13 were called again, each with the key it had before;
    # every other record was called once.
    per_line = Counter(line for _, line in calls)
    assert {line for line, n in per_line.items() if n > 1} == {
        "line 11", "line 12", "line 13",
    }  # fmt: skip
    assert set(per_line) == {f"line {n}" for n in range(1, 26)}
    keys_of = {line: {key for key, seen in calls if seen == line} for line in per_line}
    assert all(len(keys) == 1 for keys in keys_of.values())
    assert len({next(iter(keys)) for keys in keys_of.values()}) == 25

    # The ledger counts them as repeated after a crash, and all completed.
    listing = _effects(ledger_url, tmp_path, _only_run(ledger_url, tmp_path))
    assert listing["counts"]["completed"] == 25
    assert listing["counts"]["repeated_after_crash"] == 3
    assert listing["counts"]["calls"] == len(calls)
    repeated = {
        effect["record"][1]
        for effect in listing["effects"]
        if effect["repeated_after_crash"]
    }
    assert repeated == {11, 12, 13}

    # A completed run's effects are not called by a rerun of its work.
    run_id = _only_run(ledger_url, tmp_path)
    rerun = ledger_command(
        ["rerun", run_id[:8], "--from", "step:send", "--reason", "redo",
         "--no-progress"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert len(_calls(tmp_path / "calls.log")) == len(calls)


def test_a_crash_on_a_downstream_without_keys_waits_for_one_decision(
    ledger_url: str, tmp_path: Path, source: Path
) -> None:
    # Killed after the 3rd call of batch 1, then after the intent (before
    # the call) of the 2nd record of batch 2.
    for fault in ("after_effect:send:1:3", "after_intent:send:2:2"):
        killed = _run(ledger_url, tmp_path, source, "notify-plain", fault)
        assert killed.returncode == -9, killed.stderr
    finished = _run(ledger_url, tmp_path, source, "notify-plain")
    assert finished.returncode == 0, finished.stderr

    # Nothing was called twice; records 13 (called) and 22 (not called)
    # are uncertain, quarantined, and were not called by the resume.
    calls = _calls(tmp_path / "calls.log")
    per_line = Counter(line for _, line in calls)
    assert max(per_line.values()) == 1
    assert "line 22" not in per_line
    assert "line 13" in per_line
    run_id = _only_run(ledger_url, tmp_path)
    uncertain = _effects(ledger_url, tmp_path, run_id, "--state", "uncertain")
    assert sorted(e["record"][1] for e in uncertain["effects"]) == [13, 22]
    assert uncertain["counts"]["uncertain"] == 2
    listed = ledger_command(["effects", run_id[:8]], url=ledger_url, cwd=tmp_path)
    assert "2 uncertain: each waits for one decision" in listed.stdout
    explained = ledger_command(["explain", run_id], url=ledger_url, cwd=tmp_path)
    assert "2 records wait for a decision on an uncertain effect" in explained.stdout
    assert "quarantine promote --all" not in explained.stdout

    # Promoting them is refused, naming the decision they wait for.
    promoted = ledger_command(
        ["quarantine", "promote", "--all", "--run", run_id, "--yes"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert "waits for a decision on effect" in promoted.stdout + promoted.stderr
    assert len(_calls(tmp_path / "calls.log")) == 24

    # The operator checks the downstream: 13 happened, 22 did not.
    by_record = {e["record"][1]: e["key"] for e in uncertain["effects"]}
    confirmed = ledger_command(
        ["effects", "confirm", by_record[13][:8], "--reason", "in the vendor log",
         "--as", "olga"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert confirmed.returncode == 0, confirmed.stderr
    assert "recorded as done" in confirmed.stdout
    assert "written by step send" in confirmed.stdout
    retried = ledger_command(
        ["effects", "retry", by_record[22], "--reason", "not in the vendor log",
         "--as", "olga"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert retried.returncode == 0, retried.stderr

    # Each line was called exactly once, with its one key.
    calls = _calls(tmp_path / "calls.log")
    assert sorted(Counter(line for _, line in calls).values()) == [1] * 25
    assert (by_record[22], "line 22") in calls
    listing = _effects(ledger_url, tmp_path, run_id)
    assert listing["counts"]["completed"] == 25
    decided = {e["record"][1]: e["decision"] for e in listing["effects"]}
    assert decided[13]["by"] == decided[22]["by"] == "olga"

    # No record waits in quarantine any more; the decisions are history.
    pending = ledger_command(
        ["quarantine", "list", "--run", run_id, "--json"], url=ledger_url, cwd=tmp_path
    )
    assert orjson.loads(pending.stdout)["total"] == 0
    history = ledger_command(["history", run_id], url=ledger_url, cwd=tmp_path)
    assert "effect confirmed" in history.stdout
    assert "effect retried" in history.stdout

    # A decided effect cannot be decided again; nothing is appended.
    again = ledger_command(
        ["effects", "retry", by_record[13], "--reason", "second thoughts"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 2
    assert "is completed (confirmed by olga), not uncertain" in again.stderr
    assert len(_calls(tmp_path / "calls.log")) == 25


def test_an_undeclared_effect_fails_the_run_naming_the_fix(
    sqlite_url: str, tmp_path: Path, source: Path
) -> None:
    failed = _run(sqlite_url, tmp_path, source, "notify-everyone")
    assert failed.returncode == 1
    assert "effect 'notify-everyone' is not declared by the job" in failed.stderr
    assert "add it to the job's `effects`" in failed.stderr
    assert _calls(tmp_path / "calls.log") == []


def test_bad_effect_commands_say_what_to_fix(
    sqlite_url: str, tmp_path: Path, source: Path
) -> None:
    assert _run(sqlite_url, tmp_path, source, "notify").returncode == 0
    run_id = _only_run(sqlite_url, tmp_path)

    cases = [
        (["effects", run_id, "--state", "bogus"], "is not a state of an effect"),
        (["effects", "show", "zz"], "a key is hex"),
        (["effects", "show", "0000"], "no effect '0000'"),
        (["effects", "confirm", "0000"], "Missing option '--reason'"),
    ]
    for args, expected in cases:
        shown = ledger_command(args, url=sqlite_url, cwd=tmp_path)
        assert shown.returncode == 2, args
        assert expected in shown.stderr, (args, shown.stderr)
        assert len(shown.stderr.strip().splitlines()) == 1, shown.stderr
