"""Where the ledger lives: one connection string, LEDGER_URL.

- unset: the embedded default, an SQLite file at `.ledger/ledger.sqlite`
  under the current directory, kept apart from any job output;
- `sqlite:///relative/path.sqlite` or `sqlite:////absolute/path.sqlite`, or
  a plain file path;
- `postgresql://USER:PASSWORD@HOST:PORT/DBNAME` for production.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ledger.errors import LedgerUnavailable

__all__ = [
    "DEFAULT_SQLITE_PATH",
    "EVENTS_TABLE",
    "TRACKING_TABLE",
    "LedgerLocation",
    "mask_secrets",
    "parse_ledger_url",
]

DEFAULT_SQLITE_PATH = Path(".ledger") / "ledger.sqlite"

# The library names the events table after the application on PostgreSQL
# and uses a fixed name on SQLite; the read side needs both.
EVENTS_TABLE = {"sqlite": "stored_events", "postgresql": "ledger_events"}

# Where source positions (the library's tracking records) live.
TRACKING_TABLE = {"sqlite": "tracking", "postgresql": "ledger_tracking"}


@dataclass(frozen=True)
class LedgerLocation:
    """A parsed LEDGER_URL: either an SQLite path or PostgreSQL settings."""

    kind: str
    url: str
    sqlite_path: Path | None = None
    host: str = ""
    port: int = 5432
    user: str = ""
    password: str = ""
    dbname: str = ""

    @property
    def is_postgres(self) -> bool:
        return self.kind == "postgresql"

    @property
    def events_table(self) -> str:
        return EVENTS_TABLE[self.kind]

    @property
    def display_url(self) -> str:
        """The URL with any password replaced, safe for logs and errors."""
        if not self.is_postgres:
            return self.url
        return f"postgresql://{self.user}:***@{self.host}:{self.port}/{self.dbname}"

    def asyncpg_dsn(self) -> str:
        return self.url.replace("postgres://", "postgresql://", 1)


def parse_ledger_url(url: str | None = None) -> LedgerLocation:
    """Parses LEDGER_URL (or the given URL) into a location."""
    raw = url if url is not None else os.environ.get("LEDGER_URL", "")
    raw = raw.strip()

    # The embedded default.
    if not raw:
        path = DEFAULT_SQLITE_PATH
        return LedgerLocation(kind="sqlite", url=f"sqlite:///{path}", sqlite_path=path)

    # PostgreSQL: every part must be present, so a typo fails here, not later.
    if raw.startswith(("postgresql://", "postgres://")):
        return _parse_postgres(raw)

    # SQLite by URL or plain path. Anything shaped like a URL that is not one
    # of ours is refused, so a typo never becomes a file named after it.
    if raw.startswith("sqlite:///"):
        path_text = raw[len("sqlite:///") :]
    elif raw.startswith("sqlite:"):
        raise LedgerUnavailable(
            raw,
            "an SQLite URL takes three slashes before the path",
            "set LEDGER_URL to sqlite:///relative/path.sqlite or "
            "sqlite:////absolute/path.sqlite",
        )
    elif _URL_LIKE.match(raw):
        scheme = raw.split(":", 1)[0]
        raise LedgerUnavailable(mask_secrets(raw), f"unsupported scheme '{scheme}'")
    else:
        path_text = raw
    if not path_text or path_text.endswith("/"):
        raise LedgerUnavailable(raw, "the SQLite URL names no file")
    if ":memory:" in path_text or "mode=memory" in path_text:
        raise LedgerUnavailable(
            raw,
            "an in-memory ledger is lost when the process ends",
            "point LEDGER_URL at a file: checkpoints must survive crashes",
        )
    return LedgerLocation(kind="sqlite", url=raw, sqlite_path=Path(path_text))


# A scheme and a colon: `mysql://`, `postgresql:/` (one slash), `http:`.
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def mask_secrets(text: str) -> str:
    """The text with any URL password or password parameter replaced."""
    text = re.sub(r"(://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)
    text = re.sub(r"(:/+[^:/@\s]*):[^@\s]*@", r"\1:***@", text)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", text)


def _parse_postgres(raw: str) -> LedgerLocation:
    shown = mask_secrets(raw)
    try:
        parts = urlsplit(raw)
    except ValueError as error:
        raise LedgerUnavailable(shown, f"not a valid URL ({error})") from error
    if parts.query or parts.fragment:
        raise LedgerUnavailable(
            shown,
            "query options are not supported",
            "put user, password, host, port and database in the URL itself",
        )
    dbname = parts.path.lstrip("/")
    missing = [
        name
        for name, value in (
            ("host", parts.hostname),
            ("user", parts.username),
            ("database name", dbname),
        )
        if not value
    ]
    if missing:
        raise LedgerUnavailable(shown, f"the URL has no {', '.join(missing)}")
    try:
        port = parts.port or 5432
    except ValueError as error:
        raise LedgerUnavailable(shown, "the port is not a number") from error
    return LedgerLocation(
        kind="postgresql",
        url=raw,
        host=parts.hostname or "",
        port=port,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        dbname=dbname,
    )
