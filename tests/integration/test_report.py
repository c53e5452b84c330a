"""`ledger report RUN`: the incident report a reviewer reads weeks later.

A real run of the numbers job fails, has a record quarantined (its text
hostile: a `<script>` element), is paused and resumed by an operator, is
rerun from a named point and completes; another operator discards the
record. The report, in all three formats, must name each of those with
who and why, give the resume point the run had at each moment (checked
against what `ledger status` said at that moment), and show hostile text
as text. Bad input gets one line and exit code 2.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import NUMBERS_JOB, ledger_command

HOSTILE_RECORD = "<script>alert('record')</script>"
HOSTILE_REASON = "disk full <img src=x onerror=alert(1)>"
RERUN_REASON = "store rewritten after the disk swap"
DISCARD_REASON = "a test line, never a number"


@dataclass(frozen=True)
class Story:
    run_id: str
    input_sha256: str
    failed_status: dict[str, Any]
    folder: Path


def _ok(url: str, folder: Path, *args: str) -> str:
    shown = ledger_command(list(args), url=url, cwd=folder)
    assert shown.returncode == 0, (args, shown.stderr)
    return shown.stdout


def _live_through_an_incident(url: str, folder: Path) -> Story:
    """Fail, quarantine, pause, resume, rerun, complete, discard."""
    lines = [str(n) for n in range(1, 101)]
    lines[6] = HOSTILE_RECORD
    source = folder / "n<i>.txt"
    source.write_text("\n".join(lines) + "\n")
    marker = folder / "fail"
    marker.touch()
    failed = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(source), "--batch-size", "10",
         "--no-progress", "--param", f"fail_marker={marker}",
         "--param", "fail_batch=3", "--param", f"output={folder / 'out.sqlite'}"],
        url=url, cwd=folder,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    [status] = orjson.loads(_ok(url, folder, "status", "--json"))
    run_id = status["run_id"]
    short = run_id[:8]

    _ok(url, folder, "pause", short, "--reason", HOSTILE_REASON, "--as", "olga")
    marker.unlink()
    _ok(url, folder, "resume", short, "--reason", "disk freed", "--as", "olga",
        "--no-progress")  # fmt: skip
    _ok(url, folder, "rerun", short, "--from", "step:store", "--reason",
        RERUN_REASON, "--as", "olga", "--no-progress")  # fmt: skip
    record = orjson.loads(
        _ok(url, folder, "quarantine", "list", "--run", short, "--json")
    )["records"][0]["quarantine_id"]
    _ok(url, folder, "quarantine", "discard", record[:8], "--reason",
        DISCARD_REASON, "--as", "quinn")  # fmt: skip
    return Story(
        run_id, hashlib.sha256(source.read_bytes()).hexdigest(), status, folder
    )


def _report(url: str, story: Story, fmt: str, ref: str | None = None) -> str:
    ref = ref or story.run_id[:8]
    return _ok(url, story.folder, "report", ref, "--format", fmt)


def _moved_before(timeline: list[dict[str, Any]], event: str) -> dict[str, Any]:
    """The resume point as the last event before the first `event` left it."""
    index = next(n for n, entry in enumerate(timeline) if entry["event"] == event)
    return timeline[index - 1]["resume_point"]


def test_report_tells_the_incident_in_all_formats(
    ledger_url: str, tmp_path: Path
) -> None:
    story = _live_through_an_incident(ledger_url, tmp_path)
    document = orjson.loads(_report(ledger_url, story, "json"))

    # What ran: job, version, input version, parameters.
    run = document["run"]
    assert (run["run_id"], run["job"], run["job_version"]) == (
        story.run_id, "numbers", "1",
    )  # fmt: skip
    assert run["input"]["sha256"] == story.input_sha256
    assert run["input"]["name"] == "n<i>.txt"
    assert run["params"]["fail_batch"] == 3
    assert run["steps"] == ["double", "store"]

    # The attempts: failed, then completed twice (resume, then rerun).
    attempts = document["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "completed", "completed"]
    assert attempts[0]["error"] == "RuntimeError: planted failure in store"

    # Every operator decision, with who and why.
    actions = [
        (a["action"], a["by"], a["reason"]) for a in document["operator_actions"]
    ]
    assert actions == [
        ("pause", "olga", HOSTILE_REASON),
        ("resume", "olga", "disk freed"),
        ("rerun", "olga", RERUN_REASON),
        ("discard", "quinn", DISCARD_REASON),
    ]

    # The failure and the quarantined record, where they happened.
    timeline = document["timeline"]
    failed = next(e for e in timeline if e["event"] == "Run.StepFailed")
    assert (failed["details"]["step"], failed["details"]["batch"]) == ("store", 3)
    held = next(e for e in timeline if e["event"] == "Run.RecordQuarantined")
    assert held["details"]["record"] == 7
    assert held["details"]["reason"] == "not_a_number"
    assert HOSTILE_RECORD in held["details"]["detail"]
    [record] = document["quarantine"]
    assert record["state"] == "discarded"
    assert record["decision"]["by"] == "quinn"

    # The resume point at the failure is what status said then; the rerun
    # moved it back to the start of store; in the end nothing is left.
    then = story.failed_status["resume_point"]
    assert _moved_before(timeline, "Run.RunFailed") == then
    assert then["step"] == "store"
    assert then["batch"] == 3
    rerun = next(e for e in timeline if e["action"] == "rerun")
    assert rerun["resume_moved"]
    assert rerun["resume_point"]["step"] == "store"
    assert rerun["resume_point"]["batch"] == 0
    assert document["outcome"]["state"] == "completed"
    assert document["outcome"]["resume_point"] is None
    assert document["outcome"]["last_checkpoint"]["last_record"] == 100
    moved = [e for e in timeline if e["resume_moved"]]
    assert moved[-1]["resume_point"] is None

    # Markdown: the same story, hostile text only inside code spans.
    text = _report(ledger_url, story, "md")
    assert f"pause asked by `olga`: `{HOSTILE_REASON}`" in text
    assert (
        f"rerun from step `store`, batch 0, decided by `olga`: `{RERUN_REASON}`" in text
    )
    assert "discarded by `quinn`" in text
    assert "attempt 1 failed: `RuntimeError: planted failure in store`" in text
    at_failure = (
        f"resume point: step `store`, batch 3, from row {then['from_record']} "
        f"(after `line` {then['position']})"
    )
    assert at_failure in text
    for line in text.splitlines():
        for hostile in ("<script>", "<img"):
            if hostile in line:
                start = line.index(hostile)
                assert line[:start].count("`") % 2 == 1, line

    # HTML: the same story, hostile text escaped, nothing to run or fetch.
    page = _report(ledger_url, story, "html")
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    seen = _Page()
    seen.feed(page)
    assert seen.tags <= _Page.ALLOWED, seen.tags - _Page.ALLOWED
    assert not seen.risky, seen.risky
    assert HOSTILE_RECORD in seen.text
    assert f"pause asked by olga: {HOSTILE_REASON}" in seen.text
    assert f"decided by olga: {RERUN_REASON}" in seen.text
    assert f"discarded by quinn: {DISCARD_REASON}" in seen.text
    assert at_failure.replace("`", "").removeprefix("resume point: ") in seen.text
    assert "default-src 'none'" in page

    # The same report by a dashless id, and written to a file.
    bare = story.run_id.replace("-", "")
    assert _report(ledger_url, story, "json", bare) == _report(
        ledger_url, story, "json"
    )
    target = tmp_path / "report.html"
    _ok(ledger_url, tmp_path, "report", story.run_id, "--format", "html",
        "--output", str(target))  # fmt: skip
    assert target.read_text() == page


class _Page(HTMLParser):
    """The tags and attributes of a page, and its text as a reader sees it."""

    ALLOWED = frozenset(
        {"html", "head", "meta", "title", "style", "body", "h1", "h2", "dl",
         "dt", "dd", "code", "table", "tr", "th", "td", "p", "span"}
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.risky: list[tuple[str, str]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name.startswith("on") or name in ("src", "href", "action"):
                self.risky.append((name, value or ""))

    def handle_data(self, data: str) -> None:
        self.text += data


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["report", "ffffffff"], "no run id starts with ffffffff"),
        (["report", "zz-not-hex"], "is hex"),
        (["report", "RUN", "--format", "pdf"], "ledger report --help"),
        (["report", "RUN", "--output", "{tmp}/missing/report.md"], "no folder"),
        (["report", "RUN", "--output", "{tmp}"], "it is a folder"),
        (["report", "RUN", "--output", "{ledger}"], "the ledger's own file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    sqlite_url: str, tmp_path: Path, args: list[str], expected: str
) -> None:
    source = tmp_path / "n.txt"
    source.write_text("1\n2\n3\n")
    done = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(source), "--no-progress",
         "--json", "--param", f"output={tmp_path / 'out.sqlite'}"],
        url=sqlite_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id = orjson.loads(done.stdout)["run_id"]
    ledger_file = sqlite_url.removeprefix("sqlite:///")
    before = Path(ledger_file).read_bytes()
    filled = [
        a.replace("RUN", run_id).format(tmp=tmp_path, ledger=ledger_file) for a in args
    ]

    shown = ledger_command(filled, url=sqlite_url, cwd=tmp_path)
    assert shown.returncode == 2, shown
    assert expected in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1, shown.stderr
    assert shown.stdout == ""
    assert Path(ledger_file).read_bytes() == before
    assert not (tmp_path / "missing").exists()


def test_report_of_a_ledger_that_does_not_exist(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nowhere.sqlite'}"
    shown = ledger_command(["report", "abcd1234"], url=url, cwd=tmp_path)
    assert shown.returncode == 2
    assert "run a job first" in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nowhere.sqlite").exists()


NOTIFY_JOB = NUMBERS_JOB.parent / "notify.py"


def test_report_tells_a_crash_and_an_effect_decision(
    ledger_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "lines.txt"
    source.write_text("".join(f"line {n}\n" for n in range(1, 26)))
    args = [
        "run", str(NOTIFY_JOB), "--input", str(source), "--batch-size", "10",
        "--param", f"calls={tmp_path / 'calls.log'}", "--param",
        "effect=notify-plain", "--no-progress",
    ]  # fmt: skip

    # Killed between an effect's intent and its call, on a downstream that
    # does not honour keys: the resume holds the effect as uncertain.
    killed = ledger_command(
        args,
        url=ledger_url,
        cwd=tmp_path,
        env={"LEDGER_FAULT": "after_intent:send:1:2"},
    )
    assert killed.returncode == -9, killed.stderr
    finished = ledger_command(args, url=ledger_url, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    [status] = orjson.loads(_ok(ledger_url, tmp_path, "status", "--json"))
    run_id = status["run_id"]
    [effect] = orjson.loads(
        _ok(ledger_url, tmp_path, "effects", run_id, "--state", "uncertain", "--json")
    )["effects"]
    _ok(ledger_url, tmp_path, "effects", "confirm", effect["key"][:8], "--reason",
        "seen in the vendor's log", "--as", "olga")  # fmt: skip

    document = orjson.loads(
        _ok(ledger_url, tmp_path, "report", run_id, "--format", "json")
    )
    timeline = document["timeline"]

    # The crash names the batch the dead worker was in.
    crashed = next(e for e in timeline if e["event"] == "Run.AttemptCrashed")
    assert crashed["attempt"] == 1
    assert "batch 1 (from row 11)" in crashed["summary"]
    assert document["attempts"][0]["outcome"] == "crashed"

    # The effect's own story: intended, held as uncertain, then confirmed.
    told = [e for e in timeline if e["stream_id"] == effect["key"]]
    assert [e["event"] for e in told] == [
        "Effect.Intended", "Effect.Held", "Effect.Confirmed",
    ]  # fmt: skip
    assert all(e["stream"] == "effect" for e in told)
    # The decision, then the promotion of the record that waited for it.
    decision, promotion = document["operator_actions"]
    assert (decision["action"], decision["by"], decision["reason"]) == (
        "effect confirmed", "olga", "seen in the vendor's log",
    )  # fmt: skip
    assert decision["target"] == effect["key"]
    assert (promotion["action"], promotion["by"]) == ("promote", "olga")
    assert "written by step send" in promotion["summary"]
    assert document["outcome"]["effects"]["completed"] >= 24
    assert document["events"]["effects_told"] == 1

    text = _ok(ledger_url, tmp_path, "report", run_id[:8])
    assert "held as uncertain" in text
    assert "confirmed (it happened) by `olga`: `seen in the vendor's log`" in text


def test_report_shows_recorded_text_through_the_policy(
    ledger_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "n.txt"
    source.write_text("1\nx2\n3\n")
    done = ledger_command(
        ["run", str(NUMBERS_JOB), "--input", str(source), "--no-progress",
         "--json", "--param", f"fail_marker={tmp_path / 'TICKET-77'}",
         "--param", f"output={tmp_path / 'out.sqlite'}"],
        url=ledger_url, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id = orjson.loads(done.stdout)["run_id"]
    record = orjson.loads(
        _ok(ledger_url, tmp_path, "quarantine", "list", "--run", run_id, "--json")
    )["records"][0]["quarantine_id"]
    _ok(ledger_url, tmp_path, "quarantine", "discard", record[:8], "--reason",
        "see TICKET-4242", "--as", "ops@example.com")  # fmt: skip

    # A policy set afterwards names what those events hold: every format
    # shows them redacted, and who decided as given.
    _ok(ledger_url, tmp_path, "policy", "set", "--redact-pattern",
        "ticket=TICKET-[0-9]+", "--reason", "tickets are private")  # fmt: skip
    for fmt in ("json", "md", "html"):
        text = _ok(ledger_url, tmp_path, "report", run_id[:8], "--format", fmt)
        assert "TICKET-" not in text, fmt
        assert "[redacted:ticket]" in text, fmt
        said = " discarded by `ops@example.com`: `see [redacted:ticket]`"
        if fmt == "html":
            said = " discarded by <code>ops@example.com</code>: <code>see "
        elif fmt == "json":
            said = " discarded by ops@example.com: see [redacted:ticket]"
        assert said in text, fmt
