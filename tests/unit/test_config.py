"""LEDGER_URL parsing: every accepted form, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.config import DEFAULT_SQLITE_PATH, parse_ledger_url
from ledger.errors import LedgerUnavailable


def test_default_is_the_embedded_sqlite_file() -> None:
    location = parse_ledger_url("")
    assert location.kind == "sqlite"
    assert location.sqlite_path == DEFAULT_SQLITE_PATH


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///rel/l.sqlite", Path("rel/l.sqlite")),
        ("sqlite:////abs/l.sqlite", Path("/abs/l.sqlite")),
        ("plain/file.db", Path("plain/file.db")),
    ],
)
def test_sqlite_forms(url: str, path: Path) -> None:
    assert parse_ledger_url(url).sqlite_path == path


def test_postgres_url_and_redaction() -> None:
    location = parse_ledger_url("postgresql://ada:s%40cret@db.local:6543/ledger")
    assert (location.host, location.port, location.user) == ("db.local", 6543, "ada")
    assert location.password == "s@cret"
    assert location.dbname == "ledger"
    assert "s@cret" not in location.display_url
    assert location.events_table == "ledger_events"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:p@h/db", "unsupported scheme 'mysql'"),
        ("postgresql://h:5432/db", "no user"),
        ("postgresql://u:pw@h:5432/", "no database name"),
        ("postgresql://u:pw@h:port/db", "port is not a number"),
        ("sqlite:///", "names no file"),
        ("sqlite://relative.sqlite", "three slashes"),
        (":memory:", "in-memory ledger"),
        ("postgresql:/u:pw@h/db", "unsupported scheme"),
    ],
)
def test_refusals_name_the_fix(url: str, message: str) -> None:
    with pytest.raises(LedgerUnavailable, match=message) as raised:
        parse_ledger_url(url)
    assert "LEDGER_URL" in str(raised.value)
    assert ":pw@" not in str(raised.value)
