"""Who may call the HTTP API: bearer tokens from a file, each with a role.

The tokens file holds one token a line, `NAME ROLE TOKEN`, with blank
lines and `#` comment lines allowed. NAME is who the token stands for: a
control made with it is recorded as decided by NAME. A `viewer` may read;
an `operator` may read and apply controls. The server refuses to start
on a file that group or others may open, as ssh does for private keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ledger.api.errors import ApiError
from ledger.errors import LedgerError

__all__ = [
    "ROLES",
    "Caller",
    "Tokens",
    "TokensFileError",
    "load_tokens",
    "require_operator",
    "require_viewer",
]

# What each role may do.
ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "control"}),
}

# A bearer token's characters (RFC 6750's b64token), and a floor on its
# length so that a placeholder like `changeme` is refused.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,}")
_NAME = re.compile(r"[\w.@+-]{1,64}")
_MAKE_ONE = (
    "make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
)


class TokensFileError(LedgerError):
    """The tokens file cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class Caller:
    """Who made a request: the token's name and role."""

    name: str
    role: str

    def may(self, permission: str) -> bool:
        return permission in ROLES[self.role]


@dataclass(frozen=True)
class _Entry:
    caller: Caller
    digest: bytes


class Tokens:
    """The known tokens, kept as digests and compared in constant time."""

    def __init__(self, entries: list[tuple[str, str, str]]) -> None:
        self._entries = [
            _Entry(Caller(name, role), _digest(token)) for name, role, token in entries
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, presented: str) -> Caller | None:
        """The caller this token belongs to, or None.

        Every entry is compared, match or not, and digests of equal length
        are compared, so the time taken says nothing about any token.
        """
        digest = _digest(presented)
        found = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.digest):
                found = entry.caller
        return found


def _digest(token: str) -> bytes:
    # Header values arrive as latin-1 text: any character encodes.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def load_tokens(path: Path) -> Tokens:
    """Reads and checks a tokens file; refuses anything doubtful."""
    shown = str(path)

    # Private, like an ssh key: a token readable by others is not a secret.
    try:
        info = path.stat()
    except OSError as error:
        raise TokensFileError(
            f"cannot read the tokens file {shown} ({error.strerror}); pass "
            "--tokens FILE with one `NAME ROLE TOKEN` line per token"
        ) from error
    if not stat.S_ISREG(info.st_mode):
        raise TokensFileError(f"the tokens file {shown} is not a regular file")
    if info.st_mode & 0o077:
        raise TokensFileError(
            f"the tokens file {shown} is open to group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {shown}`"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TokensFileError(
            f"cannot read the tokens file {shown}: {error}; it must be UTF-8 "
            "text, one `NAME ROLE TOKEN` line per token"
        ) from error

    entries: list[tuple[str, str, str]] = []
    seen: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, role, token = _parse_line(shown, number, line)
        earlier = seen.setdefault(_digest(token), number)
        if earlier != number:
            raise TokensFileError(
                f"{shown} line {number}: the same token as line {earlier}; give "
                f"each name its own token ({_MAKE_ONE})"
            )
        entries.append((name, role, token))
    if not entries:
        raise TokensFileError(
            f"the tokens file {shown} holds no tokens; add a line "
            f"`NAME ROLE TOKEN` (ROLE: {' or '.join(ROLES)}); {_MAKE_ONE}"
        )
    return Tokens(entries)


def _parse_line(shown: str, number: int, line: str) -> tuple[str, str, str]:
    where = f"{shown} line {number}"
    fields = line.split()
    if len(fields) != 3:
        raise TokensFileError(
            f"{where}: expected `NAME ROLE TOKEN` separated by spaces, found "
            f"{len(fields)} fields"
        )
    name, role, token = fields
    if not _NAME.fullmatch(name):
        raise TokensFileError(
            f"{where}: the name must be 1 to 64 letters, digits or . @ + - _"
        )
    if role not in ROLES:
        # The field is not shown: a line in the wrong order puts a token here.
        raise TokensFileError(
            f"{where}: the second field is not a role; use {' or '.join(ROLES)}"
        )
    if not _TOKEN.fullmatch(token):
        raise TokensFileError(
            f"{where}: a token is at least 16 characters of A-Z a-z 0-9 . _ ~ + "
            f"/ = -; {_MAKE_ONE}"
        )
    return name, role, token


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token from the server's tokens file: `Authorization: Bearer TOKEN`.",
)

_Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Caller:
    if credentials is None:
        raise ApiError(
            401,
            "this endpoint needs a token: send `Authorization: Bearer TOKEN` with "
            "a token from the server's tokens file",
            _CHALLENGE,
        )
    tokens: Tokens = request.app.state.tokens
    caller = tokens.identify(credentials.credentials)
    if caller is None:
        raise ApiError(
            401,
            "the bearer token is not one this server knows; check it against "
            "the server's tokens file",
            _CHALLENGE,
        )

    # For the request log: who, never the token.
    request.state.caller = caller.name
    return caller


async def require_viewer(
    request: Request,
    credentials: _Credentials,
) -> Caller:
    """Any known token may read."""
    return _caller(request, credentials)


async def require_operator(
    request: Request,
    credentials: _Credentials,
) -> Caller:
    """Only an operator's token may apply a control."""
    caller = _caller(request, credentials)
    if not caller.may("control"):
        raise ApiError(
            403,
            f"the token of {caller.name} has the role {caller.role}, which may "
            "only read; controls need an operator's token",
        )
    return caller
