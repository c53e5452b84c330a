"""Event state encoding with orjson.

Event fields are JSON-native by design (str, int, float, bool, None, lists
and dicts of those), so that the JSON Schemas in `schemas/` describe the
stored bytes exactly. The one exception is the library's own `timestamp`,
a timezone-aware datetime, which orjson writes as ISO 8601 and we read back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from eventsourcing.persistence import Transcoder

__all__ = ["OrjsonTranscoder", "decode_state"]


class OrjsonTranscoder(Transcoder):
    """Encodes event state with orjson; restores the event timestamp."""

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)

    def decode(self, data: bytes) -> Any:
        state = orjson.loads(data)
        timestamp = state.get("timestamp")
        if isinstance(timestamp, str):
            state["timestamp"] = datetime.fromisoformat(timestamp)
        return state


def decode_state(data: bytes | memoryview) -> dict[str, Any]:
    """Decodes stored event state as plain JSON, timestamp left as text."""
    state: dict[str, Any] = orjson.loads(bytes(data))
    return state
