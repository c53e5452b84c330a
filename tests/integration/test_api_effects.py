"""Effects over HTTP: a run's listing, one effect, and the decision on an
uncertain one, as the CLI gives them; refusals record nothing."""

from __future__ import annotations

from pathlib import Path

from api_support import OPERATOR, VIEWER, count_events, served
from conftest import REPO, ledger_command

NOTIFY_JOB = REPO / "tests" / "jobs" / "notify.py"


def test_effects_are_read_and_decided_over_http(
    tmp_path: Path, ledger_url: str
) -> None:
    # A downstream without keys, and a worker killed right after the 2nd
    # call of batch 0: that effect is uncertain after the resume.
    source = tmp_path / "lines.txt"
    source.write_text("".join(f"line {n}\n" for n in range(1, 13)))
    calls = tmp_path / "calls.log"
    args = [
        "run", str(NOTIFY_JOB), "--input", str(source), "--batch-size", "5",
        "--param", f"calls={calls}", "--param", "effect=notify-plain",
        "--no-progress",
    ]  # fmt: skip
    killed = ledger_command(
        args,
        url=ledger_url,
        cwd=tmp_path,
        env={"LEDGER_FAULT": "after_effect:send:0:2"},
    )
    assert killed.returncode == -9
    finished = ledger_command(args, url=ledger_url, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr

    with served(ledger_url, tmp_path) as server, server.client(VIEWER) as viewer:
        # The listing, as `ledger effects RUN --json` prints it.
        runs = viewer.get("/v1/runs", params={"job": "notify"}).json()
        run_id = runs[0]["run_id"]
        listed = viewer.get(f"/v1/runs/{run_id[:8]}/effects")
        assert listed.status_code == 200, listed.text
        assert listed.json()["counts"]["uncertain"] == 1
        assert listed.json()["counts"]["completed"] == 11
        cli = ledger_command(
            ["effects", run_id, "--json"], url=ledger_url, cwd=tmp_path
        )
        assert cli.returncode == 0
        assert len(listed.json()["effects"]) == 12
        uncertain = viewer.get(
            f"/v1/runs/{run_id}/effects", params={"state": "uncertain"}
        ).json()["effects"]
        assert [effect["record"] for effect in uncertain] == [["record", 2]]
        key = uncertain[0]["key"]
        shown = viewer.get(f"/v1/effects/{key[:8]}")
        assert shown.json()["state"] == "uncertain"
        assert viewer.get("/v1/effects/0000").status_code == 404
        bad_state = viewer.get(f"/v1/runs/{run_id}/effects", params={"state": "x"})
        assert bad_state.status_code == 422

        metrics = viewer.get("/metrics").text
        assert 'ledger_effects{job="notify",state="uncertain"} 1.0' in metrics

        # A viewer may not decide; an operator decides, and the record
        # waiting for it is promoted without calling the downstream again.
        denied = viewer.post(f"/v1/effects/{key}/confirm", json={"reason": "seen"})
        assert denied.status_code == 403
        with server.client(OPERATOR) as api:
            decided = api.post(
                f"/v1/effects/{key}/confirm", json={"reason": "in the vendor log"}
            )
            assert decided.status_code == 200, decided.text
            body = decided.json()
            assert (body["action"], body["by"], body["key"]) == (
                "confirm",
                "alice",
                key,
            )
            assert body["promoted"]["outcome"] == "written"
            assert len(calls.read_text().splitlines()) == 12

            # Deciding again is refused, and records nothing.
            before = count_events(ledger_url)
            again = api.post(f"/v1/effects/{key}/retry", json={"reason": "x"})
            assert again.status_code == 409
            refusal = again.json()["error"]
            assert "is completed (confirmed by alice), not uncertain" in refusal
            assert count_events(ledger_url) == before
        completed = viewer.get(f"/v1/runs/{run_id}/effects").json()["counts"]
        assert completed["completed"] == 12
        metrics = viewer.get("/metrics").text
        assert 'ledger_effects{job="notify",state="completed"} 12.0' in metrics
