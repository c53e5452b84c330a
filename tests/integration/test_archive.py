"""`ledger archive`, `archive verify` and `archive load`, on both stores.

Runs are really recorded in the past: the `ledger` command runs in a
subprocess whose clock `time-machine` set back 200 or 60 days, so their
events carry those times and their hash chains are intact. The archive is
then made today. Only a run that ended before the cut-off, outside its
job's retention window and with nothing waiting in quarantine leaves the
live ledger; the others stay, each with the reason said.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
from conftest import (
    NUMBERS_JOB,
    ledger_command,
    ledger_in_the_past,
    write_numbers,
)
from ledger_support import run_statuses

from ledger.config import parse_ledger_url
from ledger.store import opened


def _job(tmp_path: Path, name: str, *, bad: tuple[int, ...] = ()) -> list[str]:
    numbers = write_numbers(tmp_path / f"{name}.txt", 120 + len(name), bad=bad)
    return [
        "run", str(NUMBERS_JOB), "--input", str(numbers), "--batch-size", "20",
        "--no-progress", "--param", f"output={tmp_path / name}.sqlite",
    ]  # fmt: skip


def _runs(url: str, cwd: Path) -> dict[str, dict[str, Any]]:
    shown = ledger_command(["status", "numbers", "--json"], url=url, cwd=cwd)
    assert shown.returncode == 0, shown.stderr
    return {run["input"]["name"]: run for run in orjson.loads(shown.stdout)}


def _stored(url: str) -> dict[str, int]:
    """How many events each stream holds, straight from the store."""
    counts: dict[str, int] = {}
    with opened(parse_ledger_url(url)) as ledger:
        for item in ledger.recorder.select_notifications(start=1, limit=1_000_000):
            key = str(item.originator_id)
            counts[key] = counts.get(key, 0) + 1
    return counts


def _make_runs(tmp_path: Path, url: str) -> dict[str, str]:
    """Five runs of the numbers job, by input name: old and done, old and
    failed, old with a record still in quarantine, old with its quarantine
    decided, and two months old."""
    ledger_in_the_past(200, _job(tmp_path, "old_done"), url, tmp_path)
    ledger_in_the_past(
        200,
        [*_job(tmp_path, "old_failed"), "--param", f"fail_marker={tmp_path}",
         "--param", "fail_batch=2"],
        url, tmp_path,
    )  # fmt: skip
    ledger_in_the_past(200, _job(tmp_path, "old_pending", bad=(5,)), url, tmp_path)
    ledger_in_the_past(200, _job(tmp_path, "old_decided", bad=(9,)), url, tmp_path)
    ledger_in_the_past(60, _job(tmp_path, "recent"), url, tmp_path)

    runs = _runs(url, tmp_path)
    ids = {name.removesuffix(".txt"): run["run_id"] for name, run in runs.items()}
    decided = ledger_command(
        ["quarantine", "discard", "--all", "--run", ids["old_decided"],
         "--reason", "bad row, known", "--yes"],
        url=url, cwd=tmp_path,
    )  # fmt: skip
    assert decided.returncode == 0, decided.stderr
    return ids


def test_archive_moves_only_runs_past_retention(
    tmp_path: Path, ledger_url: str
) -> None:
    ids = _make_runs(tmp_path, ledger_url)
    before = _stored(ledger_url)
    folder = tmp_path / "archive"

    # A dry run says what would go and why the rest stays, and changes nothing.
    planned = ledger_command(
        ["archive", "--older-than", "30d", "--to", str(folder), "--dry-run", "--json"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    plan = orjson.loads(planned.stdout)
    assert {run["run_id"] for run in plan["archived"]} == {
        ids["old_done"],
        ids["old_decided"],
    }
    why = {kept["run_id"]: kept["why"] for kept in plan["kept"]}
    assert "unfinished run is never archived" in why[ids["old_failed"]]
    assert "wait for a decision" in why[ids["old_pending"]]
    assert "retention window of 90 days" in why[ids["recent"]]
    assert _stored(ledger_url) == before
    assert not folder.exists()

    # A job kept longer by the ledger's policy keeps all its runs.
    longer = ledger_command(
        ["policy", "set", "--job-retention", "numbers=365d", "--reason", "legal hold"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert longer.returncode == 0, longer.stderr
    held = ledger_command(
        ["archive", "--older-than", "30d", "--to", str(folder), "--dry-run", "--json"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert orjson.loads(held.stdout)["archived"] == []
    assert "retention window of 365 days" in held.stdout
    back = ledger_command(
        ["policy", "set", "--no-job-retention", "numbers", "--reason", "hold lifted"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert back.returncode == 0, back.stderr

    # The archive itself.
    done = ledger_command(
        ["archive", "--older-than", "30d", "--to", str(folder), "--as", "dora",
         "--reason", "quarterly archive"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "archived 2 runs" in done.stdout
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    entries = {entry["run_id"]: entry for entry in manifest["runs"]}
    assert set(entries) == {ids["old_done"], ids["old_decided"]}

    # Gone from the store and from every read, and nothing else touched.
    after = _stored(ledger_url)
    for run in (ids["old_done"], ids["old_decided"]):
        assert run not in after
        assert entries[run]["events"] == before[run]
        assert entries[run]["streams"][0]["head"]
        assert (
            entries[run]["first_notification_id"]
            <= entries[run]["last_notification_id"]
        )
    for run in (ids["old_failed"], ids["old_pending"], ids["recent"]):
        assert after[run] == before[run]
    assert set(_runs(ledger_url, tmp_path)) == {
        "old_failed.txt",
        "old_pending.txt",
        "recent.txt",
    }
    gone = ledger_command(["history", ids["old_done"]], url=ledger_url, cwd=tmp_path)
    assert gone.returncode == 2

    # The archive is on record in the live ledger, with who and why.
    archived = [
        orjson.loads(item.state)
        for item in _notifications(ledger_url)
        if item.topic.endswith("Archiving.RunsArchived")
    ]
    assert {a["runs"][0]["run_id"] for a in archived} == set(entries)
    assert {(a["by"], a["reason"]) for a in archived} == {("dora", "quarterly archive")}
    assert {a["runs"][0]["sha256"] for a in archived} == {
        e["sha256"] for e in entries.values()
    }

    # The rest of the ledger still verifies; a second archive finds nothing.
    assert ledger_command(["verify"], url=ledger_url, cwd=tmp_path).returncode == 0
    again = ledger_command(
        ["archive", "--older-than", "30d", "--to", str(folder), "--json"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert orjson.loads(again.stdout)["archived"] == []


def test_archive_verify_and_load_back(tmp_path: Path, ledger_url: str) -> None:
    ids = _make_runs(tmp_path, ledger_url)
    folder = tmp_path / "archive"
    before = _stored(ledger_url)
    shown_before = ledger_command(
        ["history", ids["old_done"], "--json"], url=ledger_url, cwd=tmp_path
    ).stdout
    done = ledger_command(
        ["archive", "--older-than", "30d", "--to", str(folder)],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    # The folder checks out.
    checked = ledger_command(
        ["archive", "verify", str(folder)], url=ledger_url, cwd=tmp_path
    )
    assert checked.returncode == 0, checked.stdout
    assert "every file matches its manifest" in checked.stdout

    # A run of an archived input is refused, naming the way back.
    again = ledger_command(_job(tmp_path, "old_done"), url=ledger_url, cwd=tmp_path)
    assert again.returncode == 2
    assert "was archived" in again.stderr
    assert "archive load" in again.stderr

    # One changed event in a file: verify names the file, load refuses it.
    path = folder / f"{ids['old_done']}.jsonl.gz"
    original = path.read_bytes()
    lines = gzip.decompress(original).splitlines()
    lines[3] = lines[3].replace(b'"attempt\\":1', b'"attempt\\":2', 1)
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    damaged = ledger_command(
        ["archive", "verify", str(folder), "--json"], url=ledger_url, cwd=tmp_path
    )
    assert damaged.returncode == 1
    [problem] = orjson.loads(damaged.stdout)["problems"]
    assert path.name in problem
    assert "sha256" in problem
    refused = ledger_command(
        ["archive", "load", str(folder), "--run", ids["old_done"][:8]],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 1
    assert path.name in refused.stderr
    assert ids["old_done"] not in _stored(ledger_url)

    # Put back as written, the run loads, reads as before and verifies.
    path.write_bytes(original)
    loaded = ledger_command(
        ["archive", "load", str(folder), "--run", ids["old_done"][:8], "--as", "erin",
         "--reason", "incident review"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert f"loaded run {ids['old_done']}" in loaded.stdout
    assert _stored(ledger_url)[ids["old_done"]] == before[ids["old_done"]]
    shown_after = ledger_command(
        ["history", ids["old_done"], "--json"], url=ledger_url, cwd=tmp_path
    ).stdout
    assert orjson.loads(shown_after) == orjson.loads(shown_before)

    verified = ledger_command(
        ["verify", ids["old_done"], "--json"], url=ledger_url, cwd=tmp_path
    )
    assert verified.returncode == 0, verified.stdout
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    [entry] = [e for e in manifest["runs"] if e["run_id"] == ids["old_done"]]
    [head] = orjson.loads(verified.stdout)["streams_checked"]
    assert head["head"] == entry["streams"][0]["head"]

    # Loading it twice does nothing more.
    twice = ledger_command(
        ["archive", "load", str(folder), "--run", ids["old_done"]],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert twice.returncode == 0
    assert "in the live ledger already" in twice.stdout
    assert _stored(ledger_url)[ids["old_done"]] == before[ids["old_done"]]


def test_bad_archive_input(tmp_path: Path, ledger_url: str) -> None:
    ledger_in_the_past(200, _job(tmp_path, "old_done"), ledger_url, tmp_path)
    before = _stored(ledger_url)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["archive", "--older-than", "30d"], "--to DIR"),
        (["archive", "--older-than", "soon", "--to", str(empty)], "is not a time"),
        (["archive", "verify", str(empty)], "no archive manifest"),
        (["archive", "load", str(empty)], "no archive manifest"),
        (["archive", "--to", str(empty), "verify", str(empty)], "after the subcommand"),
    ]
    for args, fix in cases:
        shown = ledger_command(args, url=ledger_url, cwd=tmp_path)
        assert shown.returncode == 2, (args, shown.stdout)
        assert shown.stderr.startswith("error: "), shown.stderr
        assert fix in shown.stderr, shown.stderr
    assert _stored(ledger_url) == before
    assert run_statuses(ledger_url, tmp_path)


def _notifications(url: str) -> list[Any]:
    with opened(parse_ledger_url(url)) as ledger:
        return list(ledger.recorder.select_notifications(start=1, limit=1_000_000))
