"""`ledger serve`: the HTTP API on uvicorn.

The web stack is imported when the command runs, so every other command
starts as fast as before.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import click

from ledger.cli_support import location_of
from ledger.errors import LedgerError

__all__ = ["serve"]

_TOKENS_HELP = (
    "one line per token, `NAME ROLE TOKEN` (ROLE: viewer or operator), mode 600"
)


@click.command("serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; the API speaks plain HTTP, so keep it local "
    "or put TLS in front.",
)
@click.option(
    "--port",
    default=8787,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port, printed at start).",
)
@click.option(
    "--tokens",
    "tokens_file",
    envvar="LEDGER_API_TOKENS_FILE",
    default=None,
    metavar="FILE",
    help=f"The bearer tokens (else LEDGER_API_TOKENS_FILE): {_TOKENS_HELP}.",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, tokens_file: str | None) -> None:
    """Serve the HTTP API: reads, operator controls and /metrics."""
    import uvicorn

    from ledger.api import create_app, load_tokens

    # Refuse to start on doubtful tokens before touching the network.
    if not tokens_file:
        raise LedgerError(
            f"no tokens file: pass --tokens FILE or set LEDGER_API_TOKENS_FILE "
            f"({_TOKENS_HELP})"
        )
    tokens = load_tokens(Path(tokens_file))
    listener = _listen(host, port)
    location = location_of(ctx)
    app = create_app(location, tokens)

    # uvicorn's loggers go to the root logger the ledger's logging set up;
    # its access log is replaced by the app's own, which leaves tokens out.
    config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False)
    bound_host, bound_port = listener.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    click.echo(
        f"serving the ledger at {location.display_url} on "
        f"http://{shown_host}:{bound_port} ({len(tokens)} tokens); stop with Ctrl-C",
    )
    if not _is_loopback(bound_host):
        click.echo(
            f"warning: {bound_host} is reachable from other hosts and tokens "
            "travel in plain HTTP; put a TLS proxy in front",
            err=True,
        )
    uvicorn.Server(config).run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, so a taken port is one clear line, not a log."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as error:
        raise LedgerError(
            f"cannot listen on {host}:{port} ({error}); pass --host with a local "
            "address, such as 127.0.0.1"
        ) from error
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as error:
        listener.close()
        raise LedgerError(
            f"cannot listen on {host}:{port} ({error.strerror or error}); pick "
            "another --port, or stop what listens there"
        ) from error
    return listener


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
