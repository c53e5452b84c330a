"""The flights job's rules, on lines shaped like the real file's."""

from __future__ import annotations

import importlib.util
from collections import Counter
from types import ModuleType
from typing import Any

import pytest
from conftest import FLIGHTS_JOB

from ledger import Record, Reject


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flights_under_test", FLIGHTS_JOB)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flights = _module()

REAL = (
    "2013,1,1,517,515,2,830,819,11,UA,1545,N14228,EWR,IAH,227,1400,5,15,"
    "2013-01-01T10:00:00Z"
)
CANCELLED = (
    "2013,1,1,NA,1630,NA,NA,1815,NA,EV,4308,N18120,EWR,RDU,NA,416,16,30,"
    "2013-01-01T21:00:00Z"
)
NO_ARRIVAL = (
    "2013,1,1,2016,1930,46,NA,2220,NA,EV,4204,N14168,EWR,OKC,NA,1325,19,30,"
    "2013-01-02T00:00:00Z"
)
NO_DELAY = (
    "2013,1,1,1525,1530,-5,1934,1805,NA,MQ,4525,N719MQ,LGA,XNA,NA,1147,15,30,"
    "2013-01-01T20:00:00Z"
)


def _enrich(
    line: str, planes: dict[str, Any] | None = None
) -> tuple[Any, Counter[str]]:
    row = flights.parse_row(line)
    counters: Counter[str] = Counter()
    step = flights.Enrich(planes or {}, output=None, run_id="r")
    return step.handle(Record(1, 1, row), counters), counters


def test_a_clean_row_parses_typed() -> None:
    row = flights.parse_row(REAL)
    assert row["dep_time"] == 517
    assert row["arr_delay"] == 11
    assert row["tailnum"] == "N14228"
    assert row["time_hour"].endswith("Z")


def test_cancelled_flight_is_loaded_marked_cancelled() -> None:
    row, counters = _enrich(CANCELLED)
    assert row["cancelled"] is True
    assert row["delay_category"] == "cancelled"
    assert counters["plane_unknown"] == 1


@pytest.mark.parametrize(
    ("line", "missing"), [(NO_ARRIVAL, "arrival time"), (NO_DELAY, "arrival delay")]
)
def test_departed_without_arrival_is_incomplete(line: str, missing: str) -> None:
    with pytest.raises(Reject) as rejected:
        _enrich(line)
    assert rejected.value.reason == "incomplete"
    assert missing in rejected.value.detail


def test_known_plane_is_joined_and_unknown_counted() -> None:
    planes = {"N14228": {"manufacturer": "BOEING", "model": "737-824", "year": 1999}}
    row, counters = _enrich(REAL, planes)
    assert (row["plane_manufacturer"], row["plane_year"]) == ("BOEING", 1999)
    assert counters["plane_unknown"] == 0
    row, counters = _enrich(REAL.replace("N14228", "NA"), planes)
    assert row["plane_model"] is None
    assert counters["plane_unknown"] == 1


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        (REAL.rsplit(",", 2)[0], "expected 19 columns, found 17"),
        (REAL.replace(",517,", ",5x7,"), "column dep_time holds '5x7'"),
        (REAL.replace(",EWR,", ",,"), "column origin is empty"),
        (REAL.replace(",1400,", ",NA,"), "column distance holds 'NA'"),
    ],
)
def test_malformed_rows_are_rejected_with_the_reason(line: str, detail: str) -> None:
    with pytest.raises(Reject) as rejected:
        flights.parse_row(line)
    assert rejected.value.reason == "malformed"
    assert detail in rejected.value.detail


@pytest.mark.parametrize(
    ("delay", "category"),
    [(-20, "on_time"), (15, "on_time"), (16, "late"), (60, "late"),
     (61, "very_late"), (180, "very_late"), (181, "severe")],
)  # fmt: skip
def test_delay_categories_follow_the_15_minute_rule(delay: int, category: str) -> None:
    assert flights.delay_category(delay, cancelled=False) == category
