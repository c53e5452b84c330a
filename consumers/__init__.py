"""Kafka consumers whose progress lives in the ledger.

A consumer job (`ConsumerJob`) names its group, topics and handler; `ledger
consume` runs it with `LedgerConsumer`, which checkpoints each batch and the
partition positions it covers in one ledger transaction before it commits
the offsets to Kafka.
"""

from consumers.job import (
    ConsumerContext,
    ConsumerJob,
    Message,
    QuarantinePolicy,
    RetryPolicy,
)

__all__ = [
    "ConsumerContext",
    "ConsumerJob",
    "Message",
    "QuarantinePolicy",
    "RetryPolicy",
]
