"""Operator controls through the real `ledger` command, on both stores.

`ledger abandon` while a live worker holds the run: the decision is
recorded with who and why, the worker's next append is refused and it
stops saying so, `explain` tells the story, and `ledger resume` finishes
the run from its checkpoints. Controls that make no sense append nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
from conftest import LEDGER, NUMBERS_JOB, ledger_command, wait_until, write_numbers


def _events(url: str, cwd: Path, run_id: str) -> int:
    shown = ledger_command(["history", run_id, "--json"], url=url, cwd=cwd)
    view = orjson.loads(shown.stdout)
    return len(view["attempts"]) + len(view["run"]["actions"])


def test_abandon_a_held_run_then_resume_it(tmp_path: Path, ledger_url: str) -> None:
    numbers = write_numbers(tmp_path / "n.txt", 100)
    hold = tmp_path / "hold"
    hold.touch()
    worker = subprocess.Popen(
        [*LEDGER, "run", str(NUMBERS_JOB), "--input", str(numbers),
         "--batch-size", "10", "--no-progress", "--param", f"hold_marker={hold}",
         "--param", f"output={tmp_path / 'out.sqlite'}"],
        cwd=tmp_path, env={**_env(ledger_url)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        run_id = _wait_for_running(ledger_url, tmp_path)

        # The operator's decision, with who and why.
        done = ledger_command(
            ["abandon", run_id[:8], "--reason", "node lost in rack 4", "--as", "alice"],
            url=ledger_url, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "abandoned by alice: node lost in rack 4" in done.stdout
    finally:
        hold.unlink()
        _, err = worker.communicate(timeout=120)

    # The worker's next append was refused, and it says why.
    assert worker.returncode == 2, err
    assert "was abandoned by alice: node lost in rack 4" in err

    shown = ledger_command(["history", run_id, "--json"], url=ledger_url, cwd=tmp_path)
    view = orjson.loads(shown.stdout)
    assert view["run"]["state"] == "abandoned"
    actions = [(a["action"], a["by"], a["reason"]) for a in view["run"]["actions"]]
    assert actions[0] == ("abandon", "alice", "node lost in rack 4")

    # The late worker's refused append is on record, never applied.
    assert [a[:2] for a in actions[1:]] == [("refused", "the late worker of attempt 1")]
    assert "abandoned by alice: node lost in rack 4" in actions[1][2]
    assert view["attempts"][-1]["outcome"] == "abandoned"

    story = ledger_command(["explain", run_id], url=ledger_url, cwd=tmp_path)
    assert "was abandoned on attempt 1 by alice (node lost in rack 4)" in story.stdout
    assert f"`ledger resume {run_id[:8]}`" in story.stdout

    # Abandoning it again, or without a reason, appends nothing.
    before = _events(ledger_url, tmp_path, run_id)
    again = ledger_command(["abandon", run_id, "--reason", "twice"],
                           url=ledger_url, cwd=tmp_path)  # fmt: skip
    assert again.returncode == 2
    assert "already abandoned" in again.stderr
    bare = ledger_command(["abandon", run_id], url=ledger_url, cwd=tmp_path)
    assert bare.returncode == 2
    assert "--reason" in bare.stderr
    assert _events(ledger_url, tmp_path, run_id) == before

    # A new worker resumes it from its checkpoints and completes it.
    resumed = ledger_command(["resume", run_id, "--json"], url=ledger_url, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = orjson.loads(resumed.stdout)
    assert (summary["status"], summary["attempt"]) == ("completed", 2)
    assert summary["resumed_from"]["step"] in ("double", "store")

    # A completed run cannot be abandoned.
    late = ledger_command(["abandon", run_id, "--reason", "too late"],
                          url=ledger_url, cwd=tmp_path)  # fmt: skip
    assert late.returncode == 2
    assert "is completed" in late.stderr


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "LEDGER_URL": url}


def _wait_for_running(url: str, cwd: Path) -> str:
    """The run's id once its worker is holding it (the hold marker)."""

    def held() -> str | None:
        shown = ledger_command(["status", "--json"], url=url, cwd=cwd)
        runs = orjson.loads(shown.stdout) if shown.returncode == 0 else []
        if (
            runs
            and runs[0]["state"] == "running"
            and runs[0]["current_step"] == "store"
        ):
            return str(runs[0]["run_id"])
        return None

    return wait_until(held, "the worker to hold the run", 60)
