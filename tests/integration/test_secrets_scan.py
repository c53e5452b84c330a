"""No planted secret reaches the store, the logs, the CLI or the API in clear.

Unique secrets (an e-mail address, a Luhn-valid card number, a bearer
token, a URL with a password, values under a field and a path the ledger
policy names, and under a field and a path a job names) are planted in
the input rows of a file job, in the message its handler raises, in an
effect's error and result, in a run parameter, and in the values and
headers of Kafka messages a consumer job reads. The jobs run, so records
are quarantined and steps fail; every read command of the CLI and every
read endpoint of the API is called, with logs at debug level. Then the
raw bytes are scanned for each secret, in clear and in the encodings a
store or a log could hold it in (JSON-escaped, URL-encoded, base64, hex):

- SQLite: every file of the store (the database, its -wal and -shm);
- PostgreSQL: every row of every table of the test database as the
  server returns it (decompressed), a `pg_dump` of the database with its
  bytea values decoded, and, after a CHECKPOINT, the database's files
  and the WAL segments written during the test, when the data directory
  can be read. (Values the server compressed do not show in its files,
  so the rows and the dump are what prove their absence.)

The scanner is shown to find what it looks for, first in a unit test of
its own, then on the input each run reads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import orjson
import psycopg
from aiokafka import AIOKafkaProducer
from api_support import VIEWER, served
from conftest import LEDGER, REPO, ledger_command
from kafka_support import BOOTSTRAP, create_topic, new_names, require_broker

from ledger.config import parse_ledger_url
from ledger.patterns import luhn_valid

SECRETS_JOB = REPO / "tests" / "jobs" / "secrets.py"
STREAM_JOB = REPO / "tests" / "jobs" / "secrets_stream.py"


@dataclass(frozen=True)
class Secrets:
    """One test's secrets, unique to it, so that nothing else matches."""

    email: str
    card: str
    token: str
    url_password: str
    ledger_field: str
    ledger_path: str
    job_field: str
    job_path: str
    header_token: str
    header_password: str
    header_email: str
    dsn_password: str

    def named(self) -> dict[str, str]:
        return dict(self.__dict__)


def make_secrets() -> Secrets:
    def tag() -> str:
        return uuid.uuid4().hex[:12]

    return Secrets(
        email=f"leak.{tag()}@secrets-test.example.com",
        card=_card(),
        token=f"tok_{tag()}{tag()}",
        url_password=f"pw{tag()}",
        ledger_field=f"nid-{tag()}",
        ledger_path=f"cvv-{tag()}",
        job_field=f"ak-{tag()}",
        job_path=f"pin-{tag()}",
        header_token=f"htok_{tag()}{tag()}",
        header_password=f"hpw{tag()}",
        header_email=f"hdr.{tag()}@secrets-test.example.com",
        dsn_password=f"dsn{tag()}",
    )


def _card() -> str:
    """A Luhn-valid 16-digit number that no other test has, printed in
    groups of four as cards are."""
    body = "4" + str(uuid.uuid4().int)[:14]
    digits = next(body + d for d in "0123456789" if luhn_valid(body + d))
    return " ".join(digits[i : i + 4] for i in range(0, 16, 4))


def encodings(secret: str) -> dict[str, bytes]:
    """The secret as a store, a log or an answer could spell it."""
    raw = secret.encode()
    found = {
        "clear": raw,
        "json": json.dumps(secret)[1:-1].encode(),
        "url": quote(secret, safe="").encode(),
        "url+": quote_plus(secret).encode(),
        "base64": base64.b64encode(raw),
        "base64url": base64.urlsafe_b64encode(raw),
        "base64-unpadded": base64.b64encode(raw).rstrip(b"="),
        "hex": binascii.hexlify(raw),
    }
    digits = re.sub(r"\D", "", secret)
    if len(digits) >= 13 and " " in secret:
        found["digits"] = digits.encode()
    return found


def find_secrets(data: bytes, secrets: dict[str, str]) -> list[str]:
    """`name (encoding)` of every secret the bytes hold."""
    lowered = data.lower()
    hits = []
    for name, secret in secrets.items():
        for encoding, spelled in encodings(secret).items():
            haystack = lowered if encoding == "hex" else data
            if spelled in haystack:
                hits.append(f"{name} ({encoding})")
    return hits


def test_the_scanner_finds_a_planted_secret_in_each_encoding() -> None:
    secrets = make_secrets().named()
    for name, secret in secrets.items():
        for encoding, spelled in encodings(secret).items():
            data = b"\x00noise " + spelled + b" noise\xff"
            assert f"{name} ({encoding})" in find_secrets(data, secrets)
    assert find_secrets(b"[redacted:email] [redacted] nothing here", secrets) == []


# The ledger-wide policy names these; the jobs name `api_key`, `account.pin`.
LEDGER_FIELD = "national_id"
LEDGER_PATH = "customer.card.cvv"


def _row_secrets(s: Secrets) -> dict[str, object]:
    return {
        "email": s.email,
        "card": s.card,
        "auth": f"Bearer {s.token}",
        "callback": f"https://svc:{s.url_password}@hooks.example.com/cb",
        LEDGER_FIELD: s.ledger_field,
        "customer": {"card": {"cvv": s.ledger_path}},
        "api_key": s.job_field,
        "account": {"pin": s.job_path},
    }


def write_rows(path: Path, s: Secrets) -> Path:
    """Rows 2 and 6 are rejected, row 4's effect returns the secrets, row 7's
    effect fails with them and its handler raises with the whole row."""
    actions = ["ok", "reject", "ok", "notify", "ok", "reject", "fail", "ok"]
    lines = [
        json.dumps({"n": n, "action": action, **_row_secrets(s)})
        for n, action in enumerate(actions, start=1)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _headers(s: Secrets) -> list[tuple[str, bytes]]:
    return [
        ("authorization", f"Bearer {s.header_token}".encode()),
        ("x-callback", f"https://svc:{s.header_password}@hooks.example.com/".encode()),
        ("x-contact", s.header_email.encode()),
    ]


def _messages(s: Secrets) -> list[bytes]:
    """A reject, a raise, two clean ones, and one that is not JSON."""
    values = [
        json.dumps({"action": action, **_row_secrets(s)}).encode()
        for action in ("ok", "reject", "raise", "ok")
    ]
    broken = (
        f'{{"{LEDGER_FIELD}": "{s.ledger_field}", "card": "{s.card}", '
        f'"note": "mail {s.email}", broken'
    ).encode()
    return [*values, broken]


def produce_secrets(topic: str, s: Secrets) -> bytes:
    """Sends the messages with their headers; returns what was sent."""

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
        await producer.start()
        try:
            for value in _messages(s):
                await producer.send_and_wait(
                    topic, value, headers=_headers(s), partition=0
                )
        finally:
            await producer.stop()

    asyncio.run(send())
    sent = b"\n".join(_messages(s))
    return sent + b"".join(value for _, value in _headers(s))


class Capture:
    """Everything the ledger showed or logged, by where it came from."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.outputs: dict[str, bytes] = {}

    def cli(
        self, *args: str, expect: int = 0, env: dict[str, str] | None = None
    ) -> str:
        done = ledger_command(
            ["--log-level", "debug", *args], url=self.url, cwd=self.folder, env=env
        )
        name = "ledger " + " ".join(args)
        self.outputs[f"{name}: stdout"] = done.stdout.encode()
        self.outputs[f"{name}: stderr"] = done.stderr.encode()
        assert done.returncode == expect, (name, done.stderr[-2000:])
        return done.stdout

    def cli_json(self, *args: str) -> object:
        self.cli(*args)
        return orjson.loads(self.cli(*args, "--json"))


def consume(url: str, folder: Path, topic: str, group: str, capture: Capture) -> None:
    done = subprocess.run(
        [*LEDGER, "--log-level", "debug", "consume", str(STREAM_JOB),
         "--bootstrap-servers", BOOTSTRAP, "--member", "scan", "--until-idle", "1.5",
         "--json"],
        cwd=folder, capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "LEDGER_URL": url, "SECRETS_TOPIC": topic,
             "SECRETS_GROUP": group},
    )  # fmt: skip
    capture.outputs["ledger consume: stdout"] = done.stdout.encode()
    capture.outputs["ledger consume: stderr"] = done.stderr.encode()
    assert done.returncode == 0, done.stderr[-2000:]
    assert orjson.loads(done.stdout)["quarantined"] == 3


def read_everything(capture: Capture, runs: list[str]) -> list[str]:
    """Calls every read command on every run, record and effect; returns
    the effects' keys."""
    capture.cli_json("status")
    capture.cli_json("quarantine", "list", "--state", "all", "--limit", "1000")
    keys: list[str] = []
    for run in runs:
        capture.cli_json("history", run)
        capture.cli_json("explain", run)
        listing = capture.cli_json("effects", run)
        assert isinstance(listing, dict)
        keys += [effect["key"] for effect in listing["effects"]]
    listed = capture.cli_json("quarantine", "list", "--state", "all")
    assert isinstance(listed, dict)
    for record in listed["records"]:
        capture.cli_json("quarantine", "show", record["quarantine_id"])
    for key in keys:
        capture.cli_json("effects", "show", key)
    return keys


def call_the_api(capture: Capture, runs: list[str], keys: list[str]) -> None:
    with served(capture.url, capture.folder, log_level="debug") as server:
        with server.client(VIEWER) as viewer:
            paths = ["/v1/runs", "/v1/quarantine?state=all&limit=1000"]
            for run in runs:
                paths += [
                    f"/v1/runs/{run}",
                    f"/v1/runs/{run}/history",
                    f"/v1/runs/{run}/explain",
                    f"/v1/runs/{run}/effects",
                ]
            paths += [f"/v1/effects/{key}" for key in keys]
            for path in paths:
                answer = viewer.get(path)
                assert answer.status_code == 200, (path, answer.text)
                capture.outputs[f"GET {path}"] = answer.content
        capture.outputs["ledger serve: log"] = server.log().encode()


def store_bytes(url: str, started: float) -> dict[str, bytes]:
    """The raw bytes of the store, by where they were read."""
    location = parse_ledger_url(url)
    if location.sqlite_path is not None:
        folder = location.sqlite_path.parent
        return {
            f"sqlite file {path.name}": path.read_bytes()
            for path in sorted(folder.iterdir())
            if path.name.startswith(location.sqlite_path.name)
        }
    found = _postgres_rows(url)
    found["pg_dump"] = _postgres_dump(url)
    found.update(_postgres_files(url, started))
    return found


def _postgres_rows(url: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
            "AND table_type = 'BASE TABLE'"
        ).fetchall()
        assert tables, "the test database has no tables"
        for schema, table in tables:
            rows = conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
            found[f"rows of {schema}.{table}"] = b"\n".join(
                b"|".join(_value_bytes(value) for value in row) for row in rows
            )
    return found


def _value_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def _postgres_dump(url: str) -> bytes:
    dumped = subprocess.run(
        ["pg_dump", "--no-owner", "--dbname", url],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert dumped.returncode == 0, dumped.stderr.decode(errors="replace")

    # bytea is dumped as hex: decode it, so that a stored state is read.
    decoded = [
        binascii.unhexlify(chunk)
        for chunk in re.findall(rb"\\\\x((?:[0-9a-f]{2})+)", dumped.stdout)
    ]
    return dumped.stdout + b"\n".join(decoded)


def _postgres_files(url: str, started: float) -> dict[str, bytes]:
    """The database's files and the WAL written since the test began, when
    this process can read the server's data directory."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        row = conn.execute(
            "SELECT current_setting('data_directory'), oid FROM pg_database "
            "WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    data_dir, oid = Path(row[0]), row[1]
    found: dict[str, bytes] = {}
    try:
        for path in sorted((data_dir / "base" / str(oid)).iterdir()):
            found[f"database file {path.name}"] = path.read_bytes()
        for path in sorted((data_dir / "pg_wal").iterdir()):
            if path.is_file() and path.stat().st_mtime >= started - 1:
                found[f"wal {path.name}"] = path.read_bytes()
    except OSError:
        return {}
    return found


def test_no_secret_reaches_the_store_logs_cli_or_api_in_clear(
    ledger_url: str, tmp_path: Path
) -> None:
    require_broker()
    started = time.time()
    secrets = make_secrets()
    named = secrets.named()
    capture = Capture(ledger_url, tmp_path)

    # The ledger-wide policy names a field and a path; the jobs name theirs.
    capture.cli(
        "policy", "set", "--redact-field", LEDGER_FIELD, "--redact-path",
        LEDGER_PATH, "--reason", "personal data", "--as", "auditor",
    )  # fmt: skip

    # The input holds every secret but the headers': the scan can see them.
    rows = write_rows(tmp_path / "rows.jsonl", secrets)
    in_rows = {name for name in named if not name.startswith(("header", "dsn"))}
    assert {hit.split(" ")[0] for hit in find_secrets(rows.read_bytes(), named)} == (
        in_rows
    )

    # The file job: two records quarantined, an effect's result holding
    # secrets, an effect failing with them, the step failing with the row.
    dsn = f"postgresql://app:{secrets.dsn_password}@db.internal:5432/app"
    capture.cli(
        "run", str(SECRETS_JOB), "--input", str(rows), "--batch-size", "3",
        "--param", "max_quarantine_ratio=1", "--param", f"dsn={dsn}",
        "--no-progress", "--json", expect=1,
    )  # fmt: skip
    assert "dsn_password (clear)" in find_secrets(dsn.encode(), named)

    # The consumer job: values and headers full of secrets, three messages
    # quarantined (a rejection, a handler error, a value that is not JSON).
    topic, group = new_names("secrets-scan")
    create_topic(topic, 1)
    sent = produce_secrets(topic, secrets)
    assert "header_token (clear)" in find_secrets(sent, named)
    consume(ledger_url, tmp_path, topic, group, capture)

    # Every read of the CLI, and of the API.
    status = capture.cli_json("status")
    assert isinstance(status, list)
    runs = [run["run_id"] for run in status]
    assert len(runs) == 2
    keys = read_everything(capture, runs)
    assert len(keys) == 2
    capture.cli("resume", _file_run(status)[:8], "--no-progress", expect=2)
    call_the_api(capture, runs, keys)

    # The secrets went where they could have leaked, and came out redacted.
    _assert_paths_were_taken(capture)

    # The raw bytes read hold the events: their marks are there.
    store = store_bytes(ledger_url, started)
    postgres = parse_ledger_url(ledger_url).is_postgres
    kinds = ("rows of public.ledger_events", "pg_dump") if postgres else ("sqlite",)
    for kind in kinds:
        readable = b"".join(d for where, d in store.items() if where.startswith(kind))
        marked = b"[redacted:card]" in readable
        assert marked, f"no redaction mark in the {kind} bytes: was anything read?"

    # Nothing holds any secret, in any encoding.
    scanned = {**store, **capture.outputs}
    leaks = {
        where: hits
        for where, data in scanned.items()
        if (hits := find_secrets(data, named))
    }
    assert leaks == {}, f"secrets found in clear: {leaks}"


def _file_run(status: list[dict[str, object]]) -> str:
    return next(str(run["run_id"]) for run in status if run["job"] == "secrets-import")


def _assert_paths_were_taken(capture: Capture) -> None:
    """Each place a secret could have leaked was reached, and shows a mark
    where the secret was: the scan's silence is not for want of trying."""
    shown = b"\n".join(
        data for where, data in capture.outputs.items() if where.endswith("stdout")
    ).decode()
    for where in (
        '"reason": "bad-row"',  # quarantined rows
        '"reason": "bad-message"',  # a rejected message
        '"reason": "handler-error"',  # a handler that raised
        '"error_class": "ValueError"',  # a failed step
        '"state": "failed"',  # a failed effect
        '"state": "completed"',  # an effect whose result held secrets
        "[redacted:email]",
        "[redacted:card]",
        "[redacted:bearer]",
        "[redacted:url_password]",
        '"national_id": "[redacted]"',
        '"api_key": "[redacted]"',
        '"pin": "[redacted]"',
        '"cvv": "[redacted]"',
    ):
        assert where in shown, f"no read shows {where}"
