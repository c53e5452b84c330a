"""A consumer job for the tests: every message relayed to another topic.

Each input message is produced to the output topic through the Kafka sink
(`consumers.sink`), with its value and its key unchanged; the sink adds the
idempotency key and where the message came from as headers. A replayed
batch is therefore in the output topic twice, with the same keys.

Environment: RELAY_IN, RELAY_OUT, RELAY_GROUP (required), RELAY_BATCH
(max records per batch, default 50). The broker is the one `ledger
consume --bootstrap-servers` names.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from consumers import ConsumerContext, ConsumerJob, Message, RetryPolicy
from consumers.sink import KafkaOutput, KafkaSink
from ledger.effects import EffectPolicy

# The effect's name is part of every key the sink gives.
RELAY_EFFECT = "relay"


class Relay(ConsumerJob):
    name = "kafka-relay"
    version = "1"
    group_id = os.environ.get("RELAY_GROUP", "kafka-relay")
    topics = (os.environ.get("RELAY_IN", "kafka-relay-in"),)
    batch_max_records = int(os.environ.get("RELAY_BATCH", "50"))
    batch_max_seconds = 0.3
    retry = RetryPolicy(attempts=2, backoff_seconds=0.01)
    effects: ClassVar[dict[str, EffectPolicy]] = {
        RELAY_EFFECT: EffectPolicy(
            honours_keys=True,
            description="the output topic; its readers keep the first message "
            "per idempotency-key header",
        )
    }

    def open(self, context: ConsumerContext) -> None:
        self.sink = KafkaSink(
            context,
            topic=os.environ.get("RELAY_OUT", "kafka-relay-out"),
            effect=RELAY_EFFECT,
        )

    def handle(self, message: Message, counters: Counter[str]) -> Any:
        counters["relayed"] += 1
        return message.value

    def write(self, outputs: Sequence[tuple[Message, Any]]) -> int:
        return self.sink.send(
            KafkaOutput(message, value, key=message.key) for message, value in outputs
        )

    def close(self) -> None:
        self.sink.close()


job = Relay()
