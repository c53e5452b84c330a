"""Properties of effect keys (`ledger.keys`), checked by Hypothesis.

A key must be the same for the same effect of the same record on every
attempt and in every process, different for anything else, blind to the
order keys are computed in, and a well-formed RFC 9562 version-8 UUID.
The strings drawn are hostile on purpose: the separators a naive encoding
would join on, quotes, brackets, NUL, unicode, empty strings, and ints
beside the strings that spell them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger.job import Record
from ledger.keys import (
    KEY_SCHEME,
    EffectSite,
    consumer_site,
    file_site,
    idempotency_key,
    record_identity,
)

# Pieces that break a key made by joining strings: the separators of
# `file_site` and `consumer_site`, JSON's own syntax, and look-alikes.
HOSTILE = [
    " ", "run ", " input ", "consumer ", " group ", ",", ":", "/", "|", '"',
    "\\", "[", "]", "{", "}", "\x00", "\n", "1", "01", "-1", "é", "e\u0301",
    "🔑", "\u2028", "null", "true",
]  # fmt: skip

# Any text orjson can encode: lone surrogates are not UTF-8, and no source
# of a record identity (file line numbers, Kafka topics) produces them.
texts = st.lists(
    st.one_of(st.sampled_from(HOSTILE), st.characters(codec="utf-8")),
    max_size=6,
).map("".join)

# Job and group names made of few pieces, so that pairs that share a
# joined spelling are drawn often.
consumer_names = st.lists(
    st.sampled_from(["a", "b", " ", "group", " group "]), max_size=4
).map("".join)

# Record numbers and Kafka offsets are 64-bit.
ints = st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 3)
identities = st.lists(st.one_of(ints, texts), max_size=4).map(tuple)
sites = st.builds(EffectSite, st.lists(texts, max_size=3).map(tuple), texts)
Case = tuple[EffectSite, tuple[str | int, ...], str, str]
cases = st.tuples(sites, identities, texts, texts)


def _key(case: Case) -> UUID:
    site, record, effect, part = case
    return idempotency_key(site, record, effect, part)


def _typed(case: Case) -> Any:
    """The case with each record item's type kept: 1 and "1" differ."""
    site, record, effect, part = case
    items = tuple((type(item).__name__, item) for item in record)
    return (site.scope, site.step, items, effect, part)


@given(cases)
def test_the_same_effect_gets_the_same_key(case: Case) -> None:
    site, record, effect, part = case
    copied = (EffectSite(site.scope, site.step), list(record), effect, part)
    assert _key(case) == idempotency_key(*copied) == _key(case)


@settings(max_examples=300)
@given(st.lists(cases, min_size=2, max_size=40, unique_by=_typed))
def test_distinct_effects_get_distinct_keys(distinct: list[Case]) -> None:
    keys = [_key(case) for case in distinct]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # An int and the string that spells it.
        ((EffectSite(("s",), "load"), ("record", 1), "mail", ""),
         (EffectSite(("s",), "load"), ("record", "1"), "mail", "")),
        # A separator moved between neighbouring fields.
        ((EffectSite(("a b",), "c"), ("record", 1), "mail", ""),
         (EffectSite(("a",), "b c"), ("record", 1), "mail", "")),
        ((EffectSite(("s",), "load"), ("a,b",), "mail", ""),
         (EffectSite(("s",), "load"), ("a", "b"), "mail", "")),
        ((EffectSite(("s",), "load"), ("record", 1), "mail", ""),
         (EffectSite(("s",), "load"), ("record", 1), "", "mail")),
        ((EffectSite(("s",), "load"), ("record", 1), "mail", ""),
         (EffectSite(("s",), "load"), ("record", 1, "mail"), "", "")),
        # JSON's own syntax inside a string.
        ((EffectSite(("s",), "load"), ('a", "b',), "mail", ""),
         (EffectSite(("s",), "load"), ("a", "b"), "mail", "")),
        # Empty against absent.
        ((EffectSite(("s",), "load"), ("",), "mail", ""),
         (EffectSite(("s",), "load"), (), "mail", "")),
        # Unicode that looks the same: composed and decomposed é.
        ((EffectSite(("s",), "load"), ("record", 1), "\u00e9", ""),
         (EffectSite(("s",), "load"), ("record", 1), "e\u0301", "")),
        # A file record and a Kafka message with the same numbers.
        ((EffectSite(("s",), "load"), ("record", 7), "mail", ""),
         (EffectSite(("s",), "load"), ("message", "record", 0, 7), "mail", "")),
    ],
)  # fmt: skip
def test_look_alike_effects_get_distinct_keys(one: Case, other: Case) -> None:
    assert _key(one) != _key(other)


@given(st.uuids(), st.text(min_size=1), texts, ints)
def test_file_keys_depend_on_run_input_step_and_record(
    run_id: UUID, sha256: str, step: str, number: int
) -> None:
    identity = record_identity(Record(number=number, position=number, data=""))
    assert identity == ("record", number)
    key = idempotency_key(file_site(run_id, sha256, step), identity, "mail")

    # Another run, input, step or record: another key.
    assert key != idempotency_key(
        file_site(UUID(int=run_id.int ^ 1), sha256, step), identity, "mail"
    )
    assert key != idempotency_key(
        file_site(run_id, sha256 + "0", step), identity, "mail"
    )
    assert key != idempotency_key(
        file_site(run_id, sha256, step + "x"), identity, "mail"
    )
    assert key != idempotency_key(
        file_site(run_id, sha256, step), ("record", number + 1), "mail"
    )


@given(texts, texts, texts, st.text(min_size=1), ints, ints)
def test_message_keys_depend_on_where_the_message_is(
    job: str, group: str, step: str, topic: str, partition: int, offset: int
) -> None:
    message = SimpleNamespace(topic=topic, partition=partition, offset=offset)
    identity = record_identity(message)
    assert identity == ("message", topic, partition, offset)
    site = consumer_site(job, group, step)
    key = idempotency_key(site, identity, "mail")
    for moved in (
        ("message", topic + "x", partition, offset),
        ("message", topic, partition ^ 1, offset),
        ("message", topic, partition, offset ^ 1),
    ):
        assert key != idempotency_key(site, moved, "mail")


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(consumer_names, consumer_names), min_size=2, max_size=8, unique=True
    ),
)
@example([("a group b", "c"), ("a", "b group c")])
def test_distinct_consumers_get_distinct_keys(
    consumers: list[tuple[str, str]],
) -> None:
    keys = {
        idempotency_key(
            consumer_site(job, group, "handle"), ("message", "t", 0, 5), "mail"
        )
        for job, group in consumers
    }
    assert len(keys) == len(consumers)


@given(st.lists(cases, min_size=1, max_size=30), st.randoms())
def test_keys_do_not_depend_on_the_order_they_are_made_in(
    batch: list[Case], draw: random.Random
) -> None:
    in_order = {_typed(case): _key(case) for case in batch}
    shuffled = list(batch)
    draw.shuffle(shuffled)
    assert {_typed(case): _key(case) for case in shuffled} == in_order


@given(cases)
def test_keys_are_rfc_9562_version_8_uuids(case: Case) -> None:
    key = _key(case)
    assert key.version == 8
    assert key.variant == "specified in RFC 4122"  # RFC 9562's variant 10xx
    assert key.int >> 76 & 0xF == 0x8
    assert key.int >> 62 & 0x3 == 0b10
    assert UUID(str(key)) == key
    assert str(key)[14] == "8"
    assert str(key)[19] in "89ab"


@given(cases)
def test_a_key_is_the_documented_hash(case: Case) -> None:
    """SHA-256 of the JSON list of its parts, cut to 122 bits, with the
    version and variant set: computed here with the standard library."""
    site, record, effect, part = case
    parts = [KEY_SCHEME, list(site.scope), site.step, list(record), effect, part]
    encoded = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    value = int.from_bytes(hashlib.sha256(encoded.encode()).digest()[:16], "big")
    value = value & ~(0xF << 76) & ~(0x3 << 62) | 0x8 << 76 | 0x2 << 62
    assert _key(case) == UUID(int=value)


def test_a_key_never_changes_within_a_scheme() -> None:
    """A key computed today is the key a later release computes: changing
    it would make every in-flight effect look new to its downstream."""
    site = file_site(UUID(int=1), "ab" * 32, "load")
    key = idempotency_key(site, ("record", 1), "mail")
    assert str(key) == "5c15c854-7194-82b0-a487-a85acd294304"
    site = consumer_site("billing", "billing-v1", "handle")
    key = idempotency_key(site, ("message", "orders", 0, 42), "charge", "line 1")
    assert str(key) == "9544a33e-437e-8761-a348-929506817da0"


# Computes keys in a fresh interpreter: no state, another hash seed.
_CHILD = """
import json, sys
from ledger.keys import EffectSite, idempotency_key
for scope, step, record, effect, part in json.load(sys.stdin):
    site = EffectSite(tuple(scope), step)
    print(idempotency_key(site, [v for _, v in record], effect, part))
"""


@settings(max_examples=5, deadline=None)
@given(st.lists(cases, min_size=20, max_size=60))
def test_another_process_with_another_hash_seed_makes_the_same_keys(
    batch: list[Case],
) -> None:
    # JSON keeps 1 and "1" apart, and the type is sent along to be sure.
    sent = json.dumps([list(_typed(case)) for case in batch])
    for seed in ("0", "1", "2917"):
        child = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=sent,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=60,
            check=False,
        )
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == [str(_key(case)) for case in batch]
