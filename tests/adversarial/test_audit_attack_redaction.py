"""Audit attacks on redaction: header pairs given as lists (as JSON has no
tuples) once evaded both the structure walk and the text form."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO, ledger_command

from ledger.config import parse_ledger_url
from ledger.redaction import Redaction
from ledger.store import opened

SECRETS_JOB = REPO / "tests" / "jobs" / "secrets.py"

TOKEN = "tokSECRETa1b2c3"
API_KEY = "skliveSECRETzz9"


def _stored_bytes(url: str) -> bytes:
    with opened(parse_ledger_url(url)) as ledger:
        return b"".join(
            bytes(item.state)
            for item in ledger.recorder.select_notifications(start=1, limit=1_000_000)
        )


def test_header_pairs_as_lists_reach_events_and_cli(
    tmp_path: Path, ledger_url: str
) -> None:
    """A rejected row holding HTTP headers as `[[name, value], ...]` (how any
    JSON source carries them) keeps its `authorization` value and the job's
    `api_key` field in clear: in the quarantine preview, in the detail text
    (the row printed as a Python literal, `[['api_key', '...']]`), and in
    `quarantine list --json`. The same pair printed as a tuple,
    `('authorization', b'...')`, is redacted."""
    rows = tmp_path / "in.jsonl"
    rows.write_text(
        '{"action":"load","n":1}\n'
        '{"action":"reject","headers":[["authorization","' + TOKEN + '"],'
        '["content-type","json"]]}\n'
        '{"action":"reject","meta":[["api_key","' + API_KEY + '"]]}\n'
    )
    ran = ledger_command(
        ["run", str(SECRETS_JOB), "--input", str(rows), "--no-progress"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    listed = ledger_command(
        ["quarantine", "list", "--json"], url=ledger_url, cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr
    stored = _stored_bytes(ledger_url)
    leaks = [
        where
        for where, text in (("events", stored), ("cli", listed.stdout.encode()))
        for secret in (TOKEN, API_KEY)
        if secret.encode() in text
    ]
    assert not leaks, leaks


def test_pair_structures_are_redacted_like_their_text() -> None:
    """Unit view of the same case: the structure (a Kafka-style header list,
    or the JSON list form) is redacted as its text form is."""
    policy = Redaction(fields={"api_key"})
    assert "sekrit123" not in policy.redact_text("[('authorization', b'sekrit123')]")
    for value in (
        {"headers": [("authorization", b"sekrit123")]},
        {"headers": [["authorization", "sekrit123"]]},
        [("api_key", "sekrit123")],
    ):
        assert "sekrit123" not in repr(policy.redact(value)), value
