"""Attacks on effects where PostgreSQL and SQLite differ.

The event store keeps an effect's fields as JSON, where a NUL character
is an escape like any other; the read side copies some of them (`part`,
the error a call raised) into PostgreSQL `text` columns, which cannot
hold NUL. A downstream's error message or a record's own data decides
what those fields hold, so the read side must survive any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import REPO, ledger_command

ATTACK_JOB = REPO / "tests" / "jobs" / "effects_attack_job.py"


def _run(url: str, tmp_path: Path, source: Path, *params: str) -> Any:
    args = [
        "run", str(ATTACK_JOB), "--input", str(source), "--batch-size", "10",
        "--param", f"calls={tmp_path / 'calls.log'}", "--no-progress",
    ]  # fmt: skip
    for param in params:
        args += ["--param", param]
    return ledger_command(args, url=url, cwd=tmp_path, env={"ATTACK_HONOURS": "0"})


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("params", "lines"),
    [
        # A record whose data (the effect's part) holds a NUL.
        (("mode=part",), {3: "line \x003"}),
        # A downstream whose timeout message holds a NUL.
        (("mode=unknown", "target=3", "message=gateway said <NUL>"), {}),
    ],
    ids=["part", "error"],
)
def test_a_nul_in_an_effect_does_not_wedge_the_read_side(
    postgres_url: str,
    tmp_path: Path,
    params: tuple[str, ...],
    lines: dict[int, str],
) -> None:
    source = tmp_path / "lines.txt"
    source.write_text("".join(f"{lines.get(n, f'line {n}')}\n" for n in range(1, 26)))

    ran = _run(postgres_url, tmp_path, source, *params)
    assert "Traceback" not in ran.stderr, ran.stderr[-400:]
    assert ran.returncode == 0, ran.stderr

    shown = ledger_command(
        ["status", "effects-attack", "--json"], url=postgres_url, cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr[-400:]
    run_id = orjson.loads(shown.stdout)[0]["run_id"]
    listed = ledger_command(
        ["effects", run_id, "--json"], url=postgres_url, cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr[-400:]
    assert len(orjson.loads(listed.stdout)["effects"]) == 25
