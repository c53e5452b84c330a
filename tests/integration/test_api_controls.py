"""The operator controls over HTTP: the CLI's semantics, decided by the
token's name; refusals answer 409 and record nothing."""

from __future__ import annotations

from pathlib import Path

import orjson
from api_support import OPERATOR, VIEWER, count_events, make_runs, served
from conftest import ledger_command


def test_pause_resume_rerun_and_discard_over_http(
    tmp_path: Path, ledger_url: str
) -> None:
    runs = make_runs(ledger_url, tmp_path)
    (tmp_path / "fail").unlink(missing_ok=True)
    with served(ledger_url, tmp_path) as server, server.client(OPERATOR) as api:
        # A viewer may not decide anything.
        with server.client(VIEWER) as viewer:
            denied = viewer.post(
                f"/v1/runs/{runs.failed}/pause", json={"reason": "nope"}
            )
            assert denied.status_code == 403

        # Pause the failed run: no worker, so it is paused at once.
        paused = api.post(
            f"/v1/runs/{runs.failed[:8]}/pause", json={"reason": "vendor fix"}
        )
        assert paused.status_code == 200, paused.text
        assert paused.json()["action"] == "pause"
        assert paused.json()["worker"] is None
        shown = api.get(f"/v1/runs/{runs.failed}")
        assert shown.json()["state"] == "paused"

        # Pausing again is refused; nothing is recorded.
        before = count_events(ledger_url)
        again = api.post(f"/v1/runs/{runs.failed}/pause", json={"reason": "x"})
        assert again.status_code == 409
        assert "already paused by alice" in again.json()["error"]
        assert count_events(ledger_url) == before

        # Lift the pause; then rerun it from a named point.
        lifted = api.post(f"/v1/runs/{runs.failed}/resume", json={"reason": "fixed"})
        assert lifted.status_code == 200, lifted.text
        rerun = api.post(
            f"/v1/runs/{runs.failed}/rerun",
            json={"reason": "store wrote bad rows", "point": "step:store/batch:1"},
        )
        assert rerun.status_code == 200, rerun.text
        assert "`ledger resume" in rerun.json()["message"]
        missing = api.post(
            f"/v1/runs/{runs.failed}/rerun",
            json={"reason": "x", "point": "step:store/batch:99"},
        )
        assert missing.status_code == 409
        assert "has no batch 99" in missing.json()["error"]
        unreadable = api.post(
            f"/v1/runs/{runs.failed}/rerun", json={"reason": "x", "point": "bogus"}
        )
        assert unreadable.status_code == 422
        assert "step:NAME, batch:N or step:NAME/batch:N" in unreadable.json()["error"]

        # Promote the run's quarantined record: the job's own code rejects
        # it again, so it is quarantined anew, with its lineage.
        records = api.get("/v1/quarantine", params={"run": runs.failed}).json()
        [record] = records["records"]
        promoted = api.post(
            f"/v1/quarantine/{record['quarantine_id']}/promote",
            json={"reason": "retry after the parser fix"},
        )
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["outcome"] == "rejected"
        twice = api.post(
            f"/v1/quarantine/{record['quarantine_id']}/promote", json={"reason": "x"}
        )
        assert twice.status_code == 409

        # Discard the record it became.
        records = api.get("/v1/quarantine", params={"run": runs.failed}).json()
        [record] = records["records"]
        assert record["previous_id"] == promoted.json()["quarantine_id"]
        discarded = api.post(
            f"/v1/quarantine/{record['quarantine_id'][:8]}/discard",
            json={"reason": "not a number, never will be"},
        )
        assert discarded.status_code == 200, discarded.text
        unknown = api.post("/v1/quarantine/ffffffff/discard", json={"reason": "x"})
        assert unknown.status_code == 404

    # The CLI sees every decision, by the token's name, and the run goes on
    # from the rerun's point.
    resumed = ledger_command(
        ["resume", runs.failed, "--json", "--no-progress"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    summary = orjson.loads(resumed.stdout)
    assert summary["status"] == "completed"
    assert summary["resumed_from"]["step"] == "store"
    assert summary["resumed_from"]["batch"] == 1
    history = ledger_command(
        ["history", runs.failed, "--json"], url=ledger_url, cwd=tmp_path
    )
    actions = orjson.loads(history.stdout)["run"]["actions"]
    assert [(a["action"], a["by"]) for a in actions] == [
        ("pause", "alice"),
        ("resume", "alice"),
        ("rerun", "alice"),
        ("promote", "alice"),
        ("discard", "alice"),
    ]
