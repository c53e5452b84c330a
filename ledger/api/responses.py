"""JSON responses encoded as the CLI encodes its `--json` output.

Every answer passes the last guard on recorded text (`ledger.redaction.
shown`): events written before the policy named what they hold are shown
redacted all the same.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

from ledger.redaction import shown

__all__ = ["JsonResponse"]


class JsonResponse(JSONResponse):
    """Encoded with orjson, as `ledger ... --json` prints, so a document
    reads the same whichever adapter gave it."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(shown(content))
