"""The ledger-wide policy: recorded in the ledger, with who and why; read
back by jobs and by the read side; refused, recording nothing, when it
cannot be used."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from conftest import REPO, ledger_command

from ledger.config import parse_ledger_url
from ledger.policy import (
    POLICY_ID,
    LedgerPolicy,
    PolicyRefused,
    parse_retention,
    read_policy,
    set_policy,
    use_ledger_policy,
)
from ledger.redaction import DEFAULT, Redaction, in_force, put_in_force
from ledger.store import opened
from projections.access import read

SECRETS_JOB = REPO / "tests" / "jobs" / "secrets.py"


def _events(url: str) -> int:
    location = parse_ledger_url(url)
    with opened(location) as ledger:
        return len(ledger.recorder.select_notifications(start=1, limit=100_000))


def test_a_policy_is_recorded_with_who_and_why_and_read_back(ledger_url: str) -> None:
    location = parse_ledger_url(ledger_url)
    wanted = Redaction(fields={"SSN"}, paths=["card.number"], builtins=["email"])
    with opened(location) as ledger:
        assert use_ledger_policy(ledger) == DEFAULT
        set_policy(
            ledger, redaction=wanted, retention_days=120, by="olga", reason="pii"
        )
        put_in_force(DEFAULT)

        # A process that opens the ledger puts it in force.
        assert use_ledger_policy(ledger) == wanted
        assert in_force() == wanted
        stored: LedgerPolicy = ledger.repository.get(POLICY_ID)
        assert (stored.retention_days, stored.set_by, stored.reason) == (
            120,
            "olga",
            "pii",
        )

        # The same policy again records nothing.
        with pytest.raises(PolicyRefused, match="already says this"):
            set_policy(
                ledger, redaction=wanted, retention_days=120, by="olga", reason="x"
            )

    # The read side finds it in the same events, with the history.
    put_in_force(DEFAULT)
    state = read(location, read_policy)
    assert state.redaction == wanted
    assert in_force() == wanted
    assert [(c["by"], c["reason"], c["retention_days"]) for c in state.changes] == [
        ("olga", "pii", 120)
    ]


@pytest.mark.parametrize(
    ("text", "days"), [("120d", 120), ("30", 30), ("730d", 730), (" 90d ", 90)]
)
def test_retention_is_days_within_range(text: str, days: int) -> None:
    assert parse_retention(text) == days


@pytest.mark.parametrize("text", ["29d", "731d", "0", "4w", "-5d", "ninety"])
def test_retention_outside_range_or_unreadable_is_refused(text: str) -> None:
    with pytest.raises(PolicyRefused, match="--retention"):
        parse_retention(text)


def test_policy_set_and_show_through_the_cli(ledger_url: str, tmp_path: Path) -> None:
    first = ledger_command(
        ["policy", "set", "--redact-field", "SSN", "--redact-path", "card.number",
         "--redact-pattern", r"iban=[A-Z]{2}\d{2}[A-Z0-9]{11,30}",
         "--retention", "120d", "--reason", "adopt a policy", "--as", "olga"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "policy change 1 recorded by olga" in first.stdout

    # Settings not named are kept; built-ins switched off are recorded.
    second = ledger_command(
        ["policy", "set", "--no-builtin", "card", "--reason", "false positives"],
        url=ledger_url, cwd=tmp_path, env={"LEDGER_OPERATOR": "piotr"},
    )  # fmt: skip
    assert second.returncode == 0, second.stderr

    shown = ledger_command(["policy", "show", "--json"], url=ledger_url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    document = orjson.loads(shown.stdout)
    assert document["redaction"] == {
        "fields": ["ssn"],
        "paths": ["card.number"],
        "patterns": [{"name": "iban", "regex": r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}"}],
        "builtins": ["bearer", "url_password", "email"],
    }
    assert document["retention_days"] == 120
    assert [(c["by"], c["reason"]) for c in document["changes"]] == [
        ("olga", "adopt a policy"),
        ("piotr", "false positives"),
    ]

    text = ledger_command(["policy", "show"], url=ledger_url, cwd=tmp_path)
    assert "switched off       card" in text.stdout
    assert "by piotr: false positives" in text.stdout

    # --reset starts again from the default.
    reset = ledger_command(
        ["policy", "set", "--reset", "--reason", "start over", "--json"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert reset.returncode == 0, reset.stderr
    assert orjson.loads(reset.stdout)["redaction"] == DEFAULT.as_dict()


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (["--redact-pattern", "bad=(", "--reason", "x"], "not a valid regular"),
        (["--redact-pattern", "noequals", "--reason", "x"], "write NAME=REGEX"),
        (["--redact-pattern", "any=x*", "--reason", "x"], "matches empty text"),
        (["--retention", "20d", "--reason", "x"], "between 30d and 730d"),
        (["--retention", "1000d", "--reason", "x"], "between 30d and 730d"),
        (["--redact-field", "ssn"], "a reason is required"),
        (["--redact-field", "ssn", "--reason", " "], "a reason is required"),
        (["--no-builtin", "phone", "--reason", "x"], "the built-ins are"),
        (["--redact-path", "a..b", "--reason", "x"], "single dots"),
    ],
)
def test_a_bad_setting_is_one_line_exit_2_and_records_nothing(
    sqlite_url: str, tmp_path: Path, args: list[str], fix: str
) -> None:
    made = ledger_command(
        ["policy", "set", "--redact-field", "a", "--reason", "first"],
        url=sqlite_url, cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    before = _events(sqlite_url)

    refused = ledger_command(["policy", "set", *args], url=sqlite_url, cwd=tmp_path)

    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("error: ")
    assert fix in refused.stderr
    assert _events(sqlite_url) == before


def test_the_same_policy_again_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    for expected in (0, 2):
        again = ledger_command(
            ["policy", "set", "--redact-field", "a", "--reason", "same"],
            url=sqlite_url, cwd=tmp_path,
        )  # fmt: skip
        assert again.returncode == expected, again.stderr


def test_show_on_a_ledger_never_made_shows_the_default(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none' / 'ledger.sqlite'}"
    shown = ledger_command(["policy", "show", "--json"], url=url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout)["set"] is False
    assert not (tmp_path / "none" / "ledger.sqlite").exists()


def test_a_run_whose_parameter_was_redacted_resumes_only_with_it_given_again(
    sqlite_url: str, tmp_path: Path
) -> None:
    password = "pw-0f9e8d7c6b5a"
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "\n".join(
            json.dumps({"n": n, "action": "fail" if n == 3 else "ok", "email": "",
                        "card": "", "auth": "", "callback": ""})
            for n in range(5)
        ) + "\n"
    )  # fmt: skip
    run = [
        "run", str(SECRETS_JOB), "--input", str(rows), "--batch-size", "2",
        "--no-progress", "--param", f"dsn=postgresql://app:{password}@db/app",
    ]  # fmt: skip
    failed = ledger_command(run, url=sqlite_url, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    status = ledger_command(["status", "--json"], url=sqlite_url, cwd=tmp_path)
    [view] = orjson.loads(status.stdout)
    assert view["params"]["dsn"] == "postgresql://app:[redacted:url_password]@db/app"

    # `ledger resume` cannot give the password back: it says what can.
    resumed = ledger_command(
        ["resume", view["run_id"][:8], "--no-progress"], url=sqlite_url, cwd=tmp_path
    )
    assert resumed.returncode == 2, resumed.stderr
    assert "--param dsn redacted" in resumed.stderr
    assert f"ledger run {SECRETS_JOB}" in resumed.stderr

    # The same `ledger run` finds the same run and starts its next attempt.
    again = ledger_command(run, url=sqlite_url, cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    status = ledger_command(["status", "--json"], url=sqlite_url, cwd=tmp_path)
    [after] = orjson.loads(status.stdout)
    assert (after["run_id"], after["attempts"]) == (view["run_id"], 2)
    assert password not in failed.stderr + again.stderr + status.stdout
