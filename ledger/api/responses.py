"""JSON responses encoded as the CLI encodes its `--json` output."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

__all__ = ["JsonResponse"]


class JsonResponse(JSONResponse):
    """Encoded with orjson, as `ledger ... --json` prints, so a document
    reads the same whichever adapter gave it."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
