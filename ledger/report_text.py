"""A run report as a reader gets it: JSON, Markdown or one HTML file.

All three are rendered from the same `RunReport`. Recorded text is
untrusted (see `ledger.report_words`): Markdown shows it in code spans,
where no Markdown or HTML is interpreted, with control characters
written as escapes so that a terminal shows them instead of obeying
them; HTML escapes it, and the page's own policy forbids every script
and every outside resource, so even a mistake here runs nothing.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from ledger.report import ReportEntry, RunReport
from ledger.report_words import (
    Recorded,
    Who,
    Words,
    checkpoint_words,
    recorded,
    resume_words,
    shown_time,
    visible,
    who,
)

__all__ = ["FORMATS", "MEDIA_TYPES", "render"]

FORMATS = ("md", "html", "json")

MEDIA_TYPES = {
    "md": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "json": "application/json",
}

# The HTML page's own rules: its inline style, nothing else at all.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'"


def render(report: RunReport, fmt: str) -> str:
    """The report in one of FORMATS, through the output guard on recorded
    text (`ledger.redaction.shown`, with the policy the read put in force),
    as every other command's output and API answer."""
    from ledger.redaction import shown

    guarded = _guarded(report, shown)
    if fmt == "json":
        document = guarded.document()
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "md":
        return _markdown(guarded)
    if fmt == "html":
        return _html(guarded)
    raise ValueError(f"no report format {fmt!r}; use one of {', '.join(FORMATS)}")


def _guarded(report: RunReport, shown: Callable[[Any], Any]) -> RunReport:
    """The report with every recorded value as the guard shows it: the
    documents walked whole (so a policy's fields and paths apply to the
    parameters), each sentence's recorded pieces as text, and who decided
    or acted as given, as the guard leaves `by` and `actor`."""

    def words(said: Words) -> Words:
        return tuple(
            Recorded(shown(str(part)))
            if isinstance(part, Recorded) and not isinstance(part, Who)
            else part
            for part in said
        )

    def entry(told: ReportEntry) -> ReportEntry:
        return replace(
            told,
            reason=shown(told.reason),
            words=words(told.words),
            details=shown(told.details),
            resume_point=shown(told.resume_point),
            positions=shown(told.positions),
        )

    return replace(
        report,
        run=shown(report.run),
        outcome=shown(report.outcome),
        outcome_words=words(report.outcome_words),
        attempts=shown(report.attempts),
        quarantine=shown(report.quarantine),
        timeline=[entry(told) for told in report.timeline],
    )


def _items(values: dict[str, Any]) -> Words:
    words: Words = ()
    for name, value in values.items():
        words += (", " if words else "", recorded(name), " = ", recorded(value))
    return words or ("none",)


def _facts(report: RunReport) -> list[tuple[str, Words]]:
    """What ran, and how it ended: (label, words) pairs for either format."""
    run, outcome = report.run, report.outcome
    source = run["input"]
    if run["kind"] == "consumer":
        consumed = {
            name: f"{span.get('from', 0):,} to {span.get('to', 0):,}"
            for name, span in run["consumed"].items()
        }
        source_words: Words = (
            "group ",
            recorded(source.get("group")),
            ", member ",
            recorded(source.get("member")),
            ", topics ",
            recorded(", ".join(map(str, source.get("topics", [])))),
            "; offsets read: ",
            *_items(consumed),
        )
    else:
        source_words = (
            recorded(source.get("name")),
            ", sha256 ",
            recorded(source.get("sha256")),
            f", {source.get('size') or 0:,} bytes, at ",
            recorded(source.get("path")),
        )
    quarantined = outcome["quarantined"]
    return [
        ("Run", (recorded(run["run_id"]),)),
        ("Job", (recorded(run["job"]), " version ", recorded(run["job_version"]))),
        ("Code", (recorded(run["job_ref"]),)),
        ("Input", source_words),
        ("Input version key", (recorded(run["input_key"]),)),
        ("Parameters", _items(run["params"])),
        ("Steps", (recorded(", ".join(run["steps"])),)),
        ("Started", (shown_time(run["started_at"]),)),
        ("Outcome", report.outcome_words),
        ("Last good checkpoint", checkpoint_words(outcome["last_checkpoint"])),
        ("Resume point", resume_words(outcome["resume_point"])),
        ("Totals", _items(outcome["totals"])),
        ("Quarantined", _counted(quarantined)),
        ("Effects", _items({k: v for k, v in outcome["effects"].items() if v})),
        ("Events", _events(report.events)),
    ]


def _counted(counts: dict[str, int]) -> Words:
    if not counts:
        return ("nothing",)
    return (", ".join(f"{n:,} {state}" for state, n in sorted(counts.items())),)


def _events(counts: dict[str, Any]) -> Words:
    quiet = ", ".join(f"{n:,} {name}" for name, n in counts["not_shown"].items())
    words: Words = (
        f"{counts['run']:,} in the run's stream, {counts['shown']:,} shown below",
    )
    if quiet:
        words += (f" (not shown: {quiet})",)
    told = counts["effects_told"]
    if told:
        effects = "1 effect" if told == 1 else f"{told:,} effects"
        words += (f"; {counts['effect_events']:,} events of {effects} told",)
    return words


# Markdown.


def _code(text: str) -> str:
    """A code span that shows `text` exactly, whatever backticks it holds."""
    text = visible(text)
    if not text:
        return "*empty*"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    if text[0] == "`" or text[-1] == "`" or (text[0] == " " and text[-1] == " "):
        text = f" {text} "
    return f"{fence}{text}{fence}"


def _md(words: Words) -> str:
    return "".join(_code(w) if isinstance(w, Recorded) else w for w in words)


def _md_entry(entry: ReportEntry) -> list[str]:
    attempt = ""
    if entry.attempt is not None and entry.kind != "attempt":
        attempt = f"[attempt {entry.attempt}] "
    lines = [f"- {shown_time(entry.at)} {attempt}{_md(entry.words)}"]
    if entry.resume_moved:
        lines.append(f"  - resume point: {_md(_resume(entry))}")
    return lines


def _resume(entry: ReportEntry) -> Words:
    """Where the run resumes after the entry; a consumer, per partition."""
    words = resume_words(entry.resume_point)
    if entry.positions:
        where = ", ".join(f"{name} at {n:,}" for name, n in entry.positions.items())
        words += ("; next offsets ", recorded(where))
    return words


def _markdown(report: RunReport) -> str:
    run = report.run
    title = ("Run report: ", recorded(run["job"]), " run ", recorded(run["run_id"]))
    lines = [f"# {_md(title)}", ""]
    lines += [f"- {label}: {_md(words)}" for label, words in _facts(report)]
    lines += ["", "## Attempts", ""]
    for attempt in report.attempts:
        lines.append(f"- {_md(_attempt_words(attempt))}")
    lines += ["", "## Operator actions", ""]
    for entry in report.actions:
        lines.append(f"- {shown_time(entry.at)} {_md(entry.words)}")
    if not report.actions:
        lines.append("- none")
    lines += ["", "## Quarantined records", ""]
    lines += [f"- {_md(_record_words(record))}" for record in report.quarantine]
    if not report.quarantine:
        lines.append("- none")
    lines += ["", "## Timeline", ""]
    for entry in report.timeline:
        lines += _md_entry(entry)
    return "\n".join(lines) + "\n"


def _attempt_words(attempt: dict[str, Any]) -> Words:
    worker = attempt["worker"] or {}
    words: Words = (
        f"attempt {attempt['attempt']}: {attempt['outcome']}, ",
        f"{shown_time(attempt['started_at'])} to ",
        f"{shown_time(attempt['ended_at'])}, worker ",
        who(f"pid {worker.get('pid')} on host {worker.get('host')}"),
    )
    resumed = attempt["resumed_from"]
    if resumed:
        words += (
            ", from step ",
            recorded(resumed["step"]),
            f", batch {resumed['batch']}",
        )
    if attempt["error"]:
        words += (": ", recorded(attempt["error"]))
    if attempt["ended_by"]:
        words += ("; ended by ", who(attempt["ended_by"]))
    return words


def _record_words(record: dict[str, Any]) -> Words:
    where: Words = (f" record {record['record']} of step ", recorded(record["step"]))
    if record["topic"] is not None:
        message = f"{record['topic']}[{record['partition']}]@{record['record']}"
        where = (" message ", recorded(message))
    words: Words = (
        recorded(str(record["quarantine_id"])[:8]),
        *where,
        f", batch {record['batch']}: ",
        recorded(record["reason"]),
        ", ",
        recorded(record["detail"]),
        f"; {record['state']}",
    )
    decision = record["decision"]
    if decision:
        words += (" by ", who(decision["by"]), ": ", recorded(decision["reason"]))
    return words


# HTML.

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 80em;
  padding: 0 1em; color: #1b1b1b; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; font-size: 1.2em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .5em; text-align: left;
  vertical-align: top; }
th { background: #f3f3f3; }
code { background: #f5f5f5; padding: 0 .2em; white-space: pre-wrap;
  word-break: break-all; }
dt { font-weight: 600; } dd { margin: 0 0 .5em 1.5em; }
.operator td { background: #fff7e0; } .failure td, .attempt-failed td {
  background: #fdecea; }
.time { white-space: nowrap; font-variant-numeric: tabular-nums; }
"""


_TIMELINE_HEAD = ["when (UTC)", "attempt", "kind", "what happened", "resume point"]


def _h(words: Words) -> str:
    return "".join(
        f"<code>{html.escape(visible(w, keep_newlines=True))}</code>"
        if isinstance(w, Recorded)
        else html.escape(w)
        for w in words
    )


def _row(cells: list[str], css: str = "") -> str:
    attribute = f' class="{css}"' if css else ""
    return f"<tr{attribute}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _table(head: list[str], rows: list[str]) -> str:
    if not rows:
        return "<p>none</p>"
    heading = "".join(f"<th>{html.escape(name)}</th>" for name in head)
    return f"<table><tr>{heading}</tr>{''.join(rows)}</table>"


def _html(report: RunReport) -> str:
    run = report.run
    title = ("Run report: ", recorded(run["job"]), " run ", recorded(run["run_id"]))
    facts = "".join(
        f"<dt>{html.escape(label)}</dt><dd>{_h(words)}</dd>"
        for label, words in _facts(report)
    )
    attempts = [_row([_h(_attempt_words(a))]) for a in report.attempts]
    actions = [
        _row([f'<span class="time">{shown_time(e.at)}</span>', _h(e.words)])
        for e in report.actions
    ]
    records = [_row([_h(_record_words(record))]) for record in report.quarantine]
    timeline = [
        _row(
            [
                f'<span class="time">{shown_time(e.at)}</span>',
                "" if e.attempt is None else str(e.attempt),
                html.escape(e.kind),
                _h(e.words),
                _h(_resume(e)) if e.resume_moved else "",
            ],
            e.kind,
        )
        for e in report.timeline
    ]
    plain_title = html.escape(visible(f"Run report: {run['job']} {run['run_id']}"))
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta http-equiv="Content-Security-Policy" '
            f'content="{CONTENT_SECURITY_POLICY}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{plain_title}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>{_h(title)}</h1>",
            f"<dl>{facts}</dl>",
            "<h2>Attempts</h2>",
            _table(["attempt"], attempts),
            "<h2>Operator actions</h2>",
            _table(["when", "decision: who and why"], actions),
            "<h2>Quarantined records</h2>",
            _table(["record"], records),
            "<h2>Timeline</h2>",
            _table(_TIMELINE_HEAD, timeline),
            "</body></html>",
            "",
        ]
    )
