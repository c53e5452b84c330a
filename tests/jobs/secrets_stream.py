"""A consumer job for the secrets tests: messages and headers full of secrets.

Each message's value is JSON, by its `action`:

- `reject`: quarantined at once, its detail quoting the value and the
  message's headers;
- `raise`: the handler raises with the value and the headers printed in
  its message (tried once, then quarantined);
- anything else: handled.

A value that is not JSON fails the handler, so its preview is kept as
text. The job names no `sensitive_fields` (which would withhold such a
preview whole): its own redaction adds a field and a path instead.

Environment: SECRETS_TOPIC, SECRETS_GROUP (required).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from consumers import ConsumerJob, Message, QuarantinePolicy, RetryPolicy
from ledger import Redaction, Reject


class SecretStream(ConsumerJob):
    name = "secrets-stream"
    version = "1"
    group_id = os.environ.get("SECRETS_GROUP", "secrets-stream")
    topics = (os.environ.get("SECRETS_TOPIC", "secrets-stream"),)
    batch_max_records = 50
    batch_max_seconds = 0.3
    retry = RetryPolicy(attempts=1, backoff_seconds=0)
    quarantine = QuarantinePolicy(topic_suffix=None)
    redaction: ClassVar[Redaction] = Redaction(
        fields={"api_key"}, paths=["account.pin"], builtins=()
    )

    def handle(self, message: Message, counters: Counter[str]) -> Any:
        value = message.json()
        action = value.get("action")
        if action == "reject":
            raise Reject(
                "bad-message",
                f"message {value} with headers {message.headers} is bad",
                value,
            )
        if action == "raise":
            raise ValueError(f"cannot handle {value}; headers {message.headers}")
        counters["handled"] += 1
        return value

    def write(self, outputs: Sequence[tuple[Message, Any]]) -> int:
        return len(outputs)


job = SecretStream()
