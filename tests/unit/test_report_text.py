"""Hostile recorded text in a run report, without a store.

A run's events are made on the real `Run` aggregate, with an error
message that holds what a report must not obey: backticks, a terminal
escape, a bidirectional override, a newline and a script element. The
report must show each of them as text in every format.
"""

from __future__ import annotations

import re
from uuid import uuid4

import orjson

from ledger.report import build_report
from ledger.report_text import render
from ledger.run import Run

HOSTILE = "`rm -rf /` \x1b[2J<script>alert(1)</script>\u202etxt.exe\nnext line"


def _report_of_a_hostile_failure() -> dict[str, str]:
    run = Run.start(
        run_id=uuid4(), job="numbers", job_version="1", job_ref="numbers.py",
        input={"name": "n.txt", "path": "/tmp/n.txt", "size": 3, "sha256": "ab"},
        params={"batch_size": 10}, input_key="k", steps=["double"],
    )  # fmt: skip
    worker = {"host": "vm", "boot_id": "b", "pid": 1, "pid_started": "1"}
    attempt = run.start_attempt(worker, "2099-01-01T00:00:00+00:00")
    run.start_step(attempt, "double")
    run.fail(attempt, "double", 0, "RuntimeError", HOSTILE)
    report = build_report(list(run.collect_events()), {}, {})
    return {fmt: render(report, fmt) for fmt in ("json", "md", "html")}


def test_markdown_shows_hostile_text_as_text() -> None:
    text = _report_of_a_hostile_failure()["md"]

    # Nothing a terminal would obey, and no line the text broke.
    assert "\x1b" not in text
    assert "\u202e" not in text
    assert "\\x1b[2J" in text
    assert "\\u202e" in text
    assert "next line" in text
    line = next(row for row in text.splitlines() if "attempt 1 failed" in row)
    assert "next line" in line

    # The error sits in one code span whose fence is longer than any run
    # of backticks inside it.
    span = re.search(r"(`{2,})(RuntimeError: `rm -rf /`.*?)\1$", line)
    assert span is not None, line
    assert "<script>" in span.group(2)


def test_html_escapes_hostile_text() -> None:
    page = _report_of_a_hostile_failure()["html"]
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x1b" not in page
    assert "\u202e" not in page
    assert "default-src 'none'" in page


def test_json_keeps_the_text_as_recorded() -> None:
    document = orjson.loads(_report_of_a_hostile_failure()["json"])
    [attempt] = document["attempts"]
    assert attempt["error"] == f"RuntimeError: {HOSTILE}"
    assert attempt["outcome"] == "failed"
    failed = [e for e in document["timeline"] if e["event"] == "Run.RunFailed"]
    assert failed[0]["details"]["error_message"] == HOSTILE
