"""The PostgreSQL server that scripts/postgres.sh starts is the one expected.

A missing server is a failure, not a skip: a green run must mean that the
PostgreSQL path was exercised.

The URL comes from LEDGER_TEST_POSTGRES_URL (default
postgresql://ledger:ledger@127.0.0.1:54329/ledger_test).
"""

from __future__ import annotations

import ipaddress
import os
import re

import psycopg
import pytest

pytestmark = pytest.mark.postgres

URL = os.environ.get(
    "LEDGER_TEST_POSTGRES_URL",
    "postgresql://ledger:ledger@127.0.0.1:54329/ledger_test",
)


Connection = psycopg.Connection[tuple[object, ...]]


def test_answers_a_query() -> None:
    with _connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_listens_only_on_loopback() -> None:
    with _connect() as conn:
        row = conn.execute(
            "select inet_server_addr(), current_setting('listen_addresses')"
        ).fetchone()

    assert row is not None
    address, listen_addresses = row
    assert address == ipaddress.ip_address("127.0.0.1")
    assert listen_addresses == "127.0.0.1"


def test_keeps_durability_on() -> None:
    # Crash tests kill the server and expect committed rows to survive.
    with _connect() as conn:
        row = conn.execute(
            "select current_setting('fsync'), current_setting('synchronous_commit')"
        ).fetchone()

    assert row == ("on", "on")


# A plain function, not a fixture: pytest reports a fixture's failure as an
# error in setup, and an unreachable server must read as a failed test.
def _connect() -> Connection:
    try:
        return psycopg.connect(URL, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip()

    # Failed outside the except block, so that the report shows this
    # message and not the driver's traceback.
    pytest.fail(
        f"cannot connect to PostgreSQL at {_without_password(URL)} ({reason}): "
        "start it with scripts/postgres.sh, or point LEDGER_TEST_POSTGRES_URL "
        "at a running server",
        pytrace=False,
    )


def _without_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
