"""The ledger's HTTP API: reads, operator controls and metrics.

`create_app` builds the ASGI application for one ledger; `load_tokens`
reads the tokens file it authenticates against. `ledger serve` runs it.
"""

from ledger.api.app import create_app
from ledger.api.auth import Caller, Tokens, TokensFileError, load_tokens
from ledger.api.controls import CONTROLS, Control, ControlBody

__all__ = [
    "CONTROLS",
    "Caller",
    "Control",
    "ControlBody",
    "Tokens",
    "TokensFileError",
    "create_app",
    "load_tokens",
]
