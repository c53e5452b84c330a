"""The HTTP API through the real `ledger serve`, on both stores.

The server answers with the very documents the CLI's `--json` prints,
refuses callers without the right token, records an operator's control
under the token's name (and refuses one that makes no sense, appending
nothing), and exposes metrics that agree with what the CLI reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from api_support import (
    OPERATOR,
    VIEWER,
    count_events,
    make_runs,
    served,
    start_held_run,
)
from conftest import ledger_command, wait_until
from kafka_support import (
    ConsumerProcess,
    create_topic,
    new_names,
    produce,
    require_broker,
)
from prometheus_client.parser import text_string_to_metric_families

_LATENCY = "ledger_checkpoint_latency_seconds"


def _cli_json(url: str, folder: Path, *args: str) -> Any:
    shown = ledger_command([*args, "--json"], url=url, cwd=folder)
    assert shown.returncode == 0, shown.stderr
    return orjson.loads(shown.stdout)


def test_reads_auth_controls_and_metrics(tmp_path: Path, ledger_url: str) -> None:
    with (
        served(ledger_url, tmp_path, log_level="info") as server,
        server.client(VIEWER) as viewer,
        server.client(OPERATOR) as operator,
        server.client() as nobody,
    ):
        # Before any job ran there is no ledger: 503, saying what to do.
        early = viewer.get("/v1/runs")
        assert early.status_code == 503
        assert "run a job first" in early.json()["error"]
        assert _sample(nobody.get("/metrics").text, "ledger_read_up") == 0.0

        runs = make_runs(ledger_url, tmp_path)

        # Reads: the same documents as the CLI's --json.
        short = runs.failed[:6]
        one_record = ["quarantine", "list", "numbers", "--limit", "1", "--run", short]
        pairs = [
            ("/v1/runs", ["status"]),
            ("/v1/runs?job=numbers", ["status", "numbers"]),
            (f"/v1/runs/{runs.failed[:8]}/history", ["history", runs.failed[:8]]),
            (f"/v1/runs/{runs.failed}/explain", ["explain", runs.failed]),
            (f"/v1/runs/{runs.completed}/history", ["history", runs.completed]),
            ("/v1/quarantine", ["quarantine", "list"]),
            (
                f"/v1/quarantine?job=numbers&run={short}&limit=1&state=all",
                [*one_record, "--state", "all"],
            ),
        ]
        for path, command in pairs:
            answer = viewer.get(path)
            assert answer.status_code == 200, (path, answer.text)
            assert answer.json() == _cli_json(ledger_url, tmp_path, *command), path
        one = viewer.get(f"/v1/runs/{runs.failed.replace('-', '')}").json()
        history = _cli_json(ledger_url, tmp_path, "history", runs.failed)
        assert one == history["run"]
        assert viewer.get("/v1/quarantine").json()["total"] == 1

        # An unknown run: the CLI's message, as a 404.
        cli = ledger_command(["history", "abcdef12"], url=ledger_url, cwd=tmp_path)
        missing = viewer.get("/v1/runs/abcdef12/history")
        assert missing.status_code == 404
        assert cli.stderr.strip() == f"error: {missing.json()['error']}"
        junk = viewer.get("/v1/runs/%E2%9C%93%00x/explain")
        assert junk.status_code == 404
        assert "a run id is hex (0-9, a-f)" in junk.json()["error"]

        # Parameters out of range or unusable: 422, naming the parameter.
        for path, named in [
            ("/v1/quarantine?limit=10001", "query parameter limit"),
            ("/v1/quarantine?state=maybe", "query parameter state"),
            ("/v1/runs?job=a%00b", "query parameter job"),
        ]:
            invalid = viewer.get(path)
            assert invalid.status_code == 422, path
            assert invalid.json()["error"].startswith(named), invalid.text

        # Auth: no token, a wrong token, a viewer trying a control.
        assert nobody.get("/v1/runs").status_code == 401
        assert nobody.get("/v1/runs").headers["www-authenticate"] == "Bearer"
        with server.client(("mallory", "operator", "not-a-known-token-123")) as wrong:
            assert wrong.get("/v1/runs").status_code == 401
        before = count_events(ledger_url)
        refused = viewer.post(
            f"/v1/runs/{runs.failed}/abandon", json={"reason": "viewer tries"}
        )
        assert refused.status_code == 403
        assert "operator" in refused.json()["error"]
        blank = operator.post(f"/v1/runs/{runs.failed}/abandon", json={"reason": " "})
        assert blank.status_code == 422
        assert "reason" in blank.json()["error"]
        assert operator.post(f"/v1/runs/{runs.failed}/abandon").status_code == 422
        json_type = {"Content-Type": "application/json"}
        for body, status in [(b'{"reason": "\xff"}', 400), (b"x" * 70_000, 413)]:
            odd = operator.post(
                f"/v1/runs/{runs.failed}/abandon", content=body, headers=json_type
            )
            assert odd.status_code == status, odd.text
            assert "JSON object" in odd.json()["error"]
        assert count_events(ledger_url) == before

        # An operator abandons a run a live worker holds: recorded as the
        # token's name, and the worker's next append is refused.
        worker, hold = start_held_run(ledger_url, tmp_path)
        try:
            held = wait_until(lambda: _held_run(viewer.get("/v1/runs").json()),
                              "the worker to hold its run")  # fmt: skip
            done = operator.post(
                f"/v1/runs/{held[:8]}/abandon", json={"reason": "node lost in rack 4"}
            )
            assert done.status_code == 200, done.text
            result = done.json()
            assert (result["run_id"], result["action"], result["by"]) == (
                held, "abandon", "alice"
            )  # fmt: skip
        finally:
            hold.unlink()
            _, err = worker.communicate(timeout=120)
        assert worker.returncode == 2, err
        assert "abandoned by alice: node lost in rack 4" in err
        shown = _cli_json(ledger_url, tmp_path, "history", held)
        decisions = [
            (a["by"], a["reason"])
            for a in shown["run"]["actions"]
            if a["action"] == "abandon"
        ]
        assert decisions == [("alice", "node lost in rack 4")]
        assert viewer.get(f"/v1/runs/{held}/history").json() == shown

        # A control that makes no sense: 409 with the reason, nothing appended.
        before = count_events(ledger_url)
        late = operator.post(
            f"/v1/runs/{runs.completed}/abandon", json={"reason": "too late"}
        )
        assert late.status_code == 409
        assert "is completed" in late.json()["error"]
        assert count_events(ledger_url) == before

        # Metrics agree with what the CLI reports.
        status = _cli_json(ledger_url, tmp_path, "status", "numbers")
        pending = _cli_json(ledger_url, tmp_path, "quarantine", "list", "numbers")
        families = _metrics(nobody.get("/metrics").text)
        assert families["ledger_read_up"] == [({}, 1.0)]
        assert families["ledger_quarantine_records"] == [
            ({"job": "numbers", "state": "pending"}, pending["total"])
        ]
        latency = {name: value for name, _, value in families[_LATENCY]}
        assert latency[f"{_LATENCY}_count"] == sum(r["batches_done"] for r in status)
        assert families["ledger_projection_lag_events"] == [({}, 0.0)]
        [(_, age)] = families["ledger_projection_last_event_age_seconds"]
        assert 0 <= age < 600
        assert families["ledger_consumer_lag_messages"] == []

    # The log names callers, never their tokens.
    log = server.log()
    assert '"caller": "alice"' in log
    for _, _, token in (OPERATOR, VIEWER):
        assert token not in log


def _held_run(runs: list[dict[str, Any]]) -> str | None:
    for run in runs:
        if run["state"] == "running" and run["current_step"] == "store":
            return str(run["run_id"])
    return None


def _metrics(text: str) -> dict[str, list[Any]]:
    """Family name -> samples; a histogram's samples keep their own names."""
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "histogram":
            families[family.name] = [
                (s.name, s.labels, s.value) for s in family.samples
            ]
        else:
            families[family.name] = [(s.labels, s.value) for s in family.samples]
    return families


def _sample(text: str, name: str) -> float:
    [(_, value)] = _metrics(text)[name]
    return float(value)


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        (None, 0o600, "no tokens file: pass --tokens FILE"),
        ("alice operator alice-operator-token-0123456789\n", 0o644, "chmod 600"),
        ("# ok\nalice operator\n", 0o600, "line 2: expected `NAME ROLE TOKEN`"),
        ("bob admin bob-admin-token-0123456789\n", 0o600, "line 1: the second field"),
        ("bob viewer short\n", 0o600, "at least 16 characters"),
        ("# nothing\n", 0o600, "holds no tokens"),
    ],
)
def test_serve_refuses_doubtful_tokens(
    tmp_path: Path, content: str | None, mode: int, expected: str
) -> None:
    args = ["serve", "--port", "0"]
    if content is not None:
        tokens = tmp_path / "tokens"
        tokens.write_text(content)
        tokens.chmod(mode)
        args += ["--tokens", str(tokens)]
    refused = ledger_command(
        args,
        url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        cwd=tmp_path,
        env={"LEDGER_API_TOKENS_FILE": ""},
        timeout=60,
    )
    assert refused.returncode == 2
    assert expected in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


@pytest.mark.kafka
@pytest.mark.slow
def test_metrics_of_a_consumer_run(tmp_path: Path, ledger_url: str) -> None:
    """A real consumer run: its lag per partition, its quarantined message
    and its batches' checkpoint latencies, as the CLI reports them."""
    require_broker()
    topic, group = new_names("api-metrics")
    create_topic(topic, 2)
    values: list[dict[str, Any]] = [{"n": n} for n in range(600)]
    values[101] = {"n": 101, "poison": "raise"}
    produce(topic, values, 2)
    consumer = ConsumerProcess(
        url=ledger_url, topic=topic, group=group, sink=tmp_path / "sink.sqlite",
        member="api", folder=tmp_path, until_idle=1.5, env={"STREAM_BATCH": "100"},
    )  # fmt: skip
    assert consumer.wait() == 0, consumer.tail()

    [run] = _cli_json(ledger_url, tmp_path, "status", "stream-numbers")
    with served(ledger_url, tmp_path) as server, server.client() as nobody:
        families = _metrics(nobody.get("/metrics").text)
    lags = {
        labels["partition"]: value
        for labels, value in families["ledger_consumer_lag_messages"]
        if (labels["job"], labels["group"], labels["topic"])
        == (run["job"], group, topic)
    }
    assert lags == {
        item["partition"].removeprefix(f"{topic}[").removesuffix("]"): item["lag"]
        for item in run["consumer"]["partitions"]
    }
    assert len(lags) == 2
    assert families["ledger_quarantine_records"] == [
        ({"job": run["job"], "state": "pending"}, 1.0)
    ]
    latency = {name: value for name, _, value in families[_LATENCY]}
    assert latency[f"{_LATENCY}_count"] == run["batches_done"] > 0
