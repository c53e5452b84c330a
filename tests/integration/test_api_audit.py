"""The audit reads over HTTP, through the real `ledger serve`, on both stores.

`GET /v1/runs/{run}/report` answers what `ledger report RUN --format F`
prints, byte for byte, in each format (HTML with a policy that forbids
scripts); `GET /v1/jobs/{job}/status?as_of=TIME` what `ledger status
JOB --as-of TIME --json` prints. Both need a token, as every read does,
and answer bad input with a message naming the fix.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
from api_support import VIEWER, make_runs, served
from conftest import ledger_command


def _cli(url: str, folder: Path, *args: str) -> str:
    shown = ledger_command(list(args), url=url, cwd=folder)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_report_and_status_as_of_over_http(tmp_path: Path, ledger_url: str) -> None:
    with (
        served(ledger_url, tmp_path) as server,
        server.client(VIEWER) as viewer,
        server.client() as nobody,
    ):
        runs = make_runs(ledger_url, tmp_path)
        moment = datetime.now(UTC).isoformat()
        short = runs.failed[:8]

        # The report: the CLI's very bytes, in each format.
        for fmt, media in (
            ("json", "application/json"),
            ("md", "text/markdown"),
            ("html", "text/html"),
        ):
            answer = viewer.get(f"/v1/runs/{short}/report", params={"format": fmt})
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith(media)
            assert answer.headers["x-content-type-options"] == "nosniff"
            printed = _cli(ledger_url, tmp_path, "report", short, "--format", fmt)
            assert answer.text == printed, fmt
        page = viewer.get(f"/v1/runs/{short}/report", params={"format": "html"})
        assert "default-src 'none'" in page.headers["content-security-policy"]
        default = viewer.get(f"/v1/runs/{runs.failed}/report").json()
        assert default["run"]["run_id"] == runs.failed
        assert default["outcome"]["state"] == "failed"

        # The job's runs as of a moment: the CLI's document.
        answer = viewer.get("/v1/jobs/numbers/status", params={"as_of": moment})
        assert answer.status_code == 200, answer.text
        printed = _cli(
            ledger_url, tmp_path, "status", "numbers", "--as-of", moment, "--json"
        )
        assert answer.json() == orjson.loads(printed)
        assert {run["run_id"] for run in answer.json()} == {runs.failed, runs.completed}
        early = viewer.get("/v1/jobs/numbers/status", params={"as_of": "2000-01-01"})
        assert early.json() == []

        # Reads need a token; bad input names the fix.
        assert nobody.get(f"/v1/runs/{short}/report").status_code == 401
        refused = nobody.get("/v1/jobs/numbers/status", params={"as_of": "1d"})
        assert refused.status_code == 401
        missing = viewer.get("/v1/runs/ffffffff/report")
        assert missing.status_code == 404
        assert "ledger status" in missing.json()["error"]
        bad_format = viewer.get(f"/v1/runs/{short}/report", params={"format": "pdf"})
        assert bad_format.status_code == 422
        assert "format" in bad_format.json()["error"]
        for bad in ("yesterday", "9" * 30 + "d"):
            not_a_time = viewer.get("/v1/jobs/numbers/status", params={"as_of": bad})
            assert not_a_time.status_code == 422, bad
            assert "as_of" in not_a_time.json()["error"]
            assert "ISO 8601" in not_a_time.json()["error"]
        no_time = viewer.get("/v1/jobs/numbers/status")
        assert no_time.status_code == 422
        assert "as_of" in no_time.json()["error"]
