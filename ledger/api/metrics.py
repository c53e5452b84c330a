"""Prometheus metrics, read from the ledger when scraped.

Nothing is counted as requests go by: each scrape asks the read side (the
read tables as they stand, without catching them up, and the log for batch
timings) and renders what it finds. Labels carry job, group, topic and
partition names only, never a URL, a parameter or a payload.

- `ledger_checkpoint_latency_seconds{job}`: histogram of the time from a
  batch's start to its checkpoint, over every checkpoint in the log;
- `ledger_quarantine_records{job,state}`: quarantined records by state;
- `ledger_effects{job,state}`: effects by state (`uncertain` ones wait for
  an operator's decision);
- `ledger_projection_lag_events`: events in the log the read tables do not
  hold yet;
- `ledger_projection_last_event_age_seconds`: seconds since the newest event
  the read tables hold was recorded;
- `ledger_consumer_lag_messages{job,group,topic,partition}`: messages left
  behind each partition's position at its newest checkpoint;
- `ledger_read_up`: 1 when this scrape could read the ledger, else 0 (and
  the families above are left out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ledger.errors import LedgerError
from projections.database import ReadDatabase
from projections.gauges import ReadSideGauges, read_gauges
from projections.latency import CheckpointLatencies
from projections.reader import SharedReader

__all__ = ["LedgerMetrics"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Snapshot:
    gauges: ReadSideGauges
    taken_at: datetime


class LedgerMetrics(Collector):
    """Renders the ledger's metrics, querying it once per scrape."""

    def __init__(self, reader: SharedReader) -> None:
        self._reader = reader
        self._latencies = CheckpointLatencies()
        self._snapshot: _Snapshot | None = None

        # One scrape at a time: the latency follower keeps a position, and
        # a render must show the snapshot its own refresh took.
        self._lock = asyncio.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    async def render(self, accept: str) -> tuple[bytes, str]:
        """The metrics as the scraper's Accept header asks (Prometheus text
        or OpenMetrics), with their content type, from the ledger as it
        stands now."""
        encoder, content_type = choose_encoder(accept)
        async with self._lock:
            await self._refresh()
            return encoder(self.registry), content_type

    async def _refresh(self) -> None:
        async def query(db: ReadDatabase) -> ReadSideGauges:
            await self._latencies.follow(db)
            return await read_gauges(db)

        # A scrape always answers: `ledger_read_up 0` is the signal, and the
        # log says why.
        try:
            gauges = await self._reader.read(query, up_to_date=False)
        except LedgerError as error:
            log.warning("metrics_unavailable", error=str(error))
            self._snapshot = None
            return
        except Exception:
            # A driver error mid-scrape, such as a table dropped by
            # `ledger project --rebuild` between two queries.
            log.exception("metrics_failed")
            self._snapshot = None
            return
        self._snapshot = _Snapshot(gauges, datetime.now(UTC))

    def describe(self) -> Iterable[Metric]:
        # Registering must not query the ledger: with nothing described, the
        # registry skips its name-clash check for this collector.
        return []

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "ledger_read_up", "1 when this scrape could read the ledger, else 0."
        )
        up.add_metric([], 0 if self._snapshot is None else 1)
        yield up
        if self._snapshot is None:
            return
        yield self._latency_family()
        yield from _gauge_families(self._snapshot)

    def _latency_family(self) -> Metric:
        family = HistogramMetricFamily(
            "ledger_checkpoint_latency_seconds",
            "Time from a batch's start to its checkpoint, per job.",
            labels=["job"],
        )
        for job, histogram in sorted(self._latencies.by_job.items()):
            family.add_metric(
                [job], histogram.cumulative(), sum_value=histogram.total_seconds
            )
        return family


def _gauge_families(snapshot: _Snapshot) -> Iterable[Metric]:
    gauges = snapshot.gauges
    quarantine = GaugeMetricFamily(
        "ledger_quarantine_records",
        "Quarantined records, per job and state.",
        labels=["job", "state"],
    )
    for (job, state), count in sorted(gauges.quarantine.items()):
        quarantine.add_metric([job, state], count)
    yield quarantine

    effects = GaugeMetricFamily(
        "ledger_effects",
        "Effects, per job and state; uncertain ones wait for an operator.",
        labels=["job", "state"],
    )
    # Every job with effects reports its uncertain ones, 0 included: an
    # alert on the gauge sees it fall back, not vanish.
    counts = dict(gauges.effects)
    for job in {job for job, _ in gauges.effects}:
        counts.setdefault((job, "uncertain"), 0)
    for (job, state), count in sorted(counts.items()):
        effects.add_metric([job, state], count)
    yield effects

    behind = GaugeMetricFamily(
        "ledger_projection_lag_events",
        "Events in the log that the read tables do not hold yet.",
    )
    behind.add_metric([], gauges.events_behind)
    yield behind

    age = GaugeMetricFamily(
        "ledger_projection_last_event_age_seconds",
        "Seconds since the newest event the read tables hold was recorded.",
    )
    if gauges.newest_projected_at is not None:
        seconds = (snapshot.taken_at - gauges.newest_projected_at).total_seconds()
        age.add_metric([], max(0.0, seconds))
    yield age

    consumer = GaugeMetricFamily(
        "ledger_consumer_lag_messages",
        "Messages behind each partition's position at its newest checkpoint.",
        labels=["job", "group", "topic", "partition"],
    )
    for item in gauges.consumer_lag:
        consumer.add_metric(
            [item.job, item.group, item.topic, item.partition], item.lag
        )
    yield consumer
