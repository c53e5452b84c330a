"""The redaction policy: what it finds, that it finds it anywhere, and that
it leaves everything else alone.

The properties are checked with Hypothesis: a secret planted anywhere in
any JSON (or in a text that quotes that JSON) never survives; redacting
twice is redacting once; text that cannot hold a secret is not changed.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
import structlog
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ledger.effects import _keepable
from ledger.logs import configure_logging
from ledger.patterns import REDACTED, luhn_valid, mark
from ledger.redaction import (
    DEFAULT,
    NOTHING,
    Redaction,
    RedactionError,
    enforced,
    in_force,
    put_in_force,
    shown,
)

# The policy the properties use: every built-in, and a field, a path and a
# pattern of its own. No name here can be spelled by `_plain_text`.
POLICY = Redaction(
    fields={"zip_secret"},
    paths=["vault.*.key"],
    patterns={"ticket": r"TKT-[0-9]{6}"},
)


# Secrets, one strategy per kind: each gives (the secret, how to plant it).

_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)


def _with_check_digit(body: str) -> str:
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return body + digit
    raise AssertionError("unreachable: one check digit always fits")


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(
        st.text("abcdefghijklmnopqrstuvwxyz0123456789._+-", min_size=1, max_size=12)
    )
    labels = draw(st.lists(_LABEL, min_size=1, max_size=3))
    tld = draw(st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=6))
    return f"{local}@{'.'.join(labels)}.{tld}"


@st.composite
def cards(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    body = draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    digits = _with_check_digit(body)
    separator = draw(st.sampled_from(["", " ", "-"]))
    if not separator:
        return digits
    return separator.join(digits[i : i + 4] for i in range(0, len(digits), 4))


TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/"


@st.composite
def bearer_tokens(draw: st.DrawFn) -> str:
    return draw(st.text(TOKEN_CHARS, min_size=12, max_size=40))


@st.composite
def url_passwords(draw: st.DrawFn) -> str:
    return draw(st.text(TOKEN_CHARS.replace("/", ""), min_size=6, max_size=24))


# Any JSON, with keys that never collide with a field the policy names.
_KEYS = st.text("abcdefghijklmnopqrstuvxy_", min_size=1, max_size=6)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.text("abcdefghijklmnopqrstuvwxy ", max_size=10),
)
JSON = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_KEYS, children, max_size=4)
    ),
    max_leaves=12,
)


def _plant(document: Any, value: Any, key: str, draw: st.DrawFn) -> Any:
    """The document with `value` under `key` somewhere inside it."""
    holder: dict[str, Any] = {key: value}
    depth = draw(st.integers(0, 3))
    for _ in range(depth):
        wrap = draw(_KEYS)
        holder = {wrap: [holder]} if draw(st.booleans()) else {wrap: holder}
    return {"doc": document, "n": holder} if draw(st.booleans()) else [holder, document]


@st.composite
def planted(draw: st.DrawFn) -> tuple[Any, list[str]]:
    """A document holding a secret of some kind, and the texts that must not
    survive redaction."""
    kind = draw(st.sampled_from(["email", "card", "bearer", "url", "field", "path"]))
    document = draw(JSON)
    around = draw(st.sampled_from(["{}", "see {} now", "({})", "x: {};"]))
    if kind == "email":
        secret = draw(emails())
        return _plant(document, around.format(secret), draw(_KEYS), draw), [secret]
    if kind == "card":
        secret = draw(cards())
        return _plant(document, around.format(secret), draw(_KEYS), draw), [secret]
    if kind == "bearer":
        secret = draw(bearer_tokens())
        text = around.format(f"Authorization: Bearer {secret}")
        return _plant(document, text, draw(_KEYS), draw), [secret]
    if kind == "url":
        secret = draw(url_passwords())
        text = around.format(f"postgresql://svc:{secret}@db.example.com:5432/app")
        return _plant(document, text, draw(_KEYS), draw), [secret]
    secret = "s3cr3t-" + draw(st.text("0123456789abcdef", min_size=8, max_size=8))
    if kind == "field":
        name = draw(st.sampled_from(["zip_secret", "ZIP_SECRET", "Zip_Secret"]))
        return _plant(document, secret, name, draw), [secret]
    vault = {"vault": {draw(_KEYS): {"key": secret, "other": 1}}}
    return [document, vault][:: draw(st.sampled_from([1, -1]))], [secret]


def _planted_once(document: Any, secrets: list[str]) -> None:
    """Only documents where the secret is nowhere but where it was planted
    (a random key could spell it) say anything about redaction."""
    text = orjson.dumps(document).decode()
    assume(all(text.count(secret) == 1 for secret in secrets))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(planted())
def test_a_planted_secret_never_survives_the_json_it_is_nested_in(
    example: tuple[Any, list[str]],
) -> None:
    document, secrets = example
    _planted_once(document, secrets)
    redacted = orjson.dumps(POLICY.redact(document)).decode()
    for secret in secrets:
        assert secret not in redacted


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(planted(), st.sampled_from(["json", "repr"]))
def test_a_planted_secret_never_survives_a_text_that_quotes_its_json(
    example: tuple[Any, list[str]], spelling: str
) -> None:
    document, secrets = example
    _planted_once(document, secrets)
    quoted = orjson.dumps(document).decode() if spelling == "json" else repr(document)
    text = f"ValueError: cannot load row {quoted}; giving up"
    redacted = POLICY.redact_text(text)
    for secret in secrets:
        assert secret not in redacted


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(planted().map(lambda example: example[0]), JSON, st.text()))
def test_redacting_twice_is_redacting_once(value: Any) -> None:
    once = POLICY.redact(value)
    assert POLICY.redact(once) == once


@settings(max_examples=200)
@given(st.text())
def test_redacting_any_text_twice_is_redacting_once(text: str) -> None:
    once = POLICY.redact_text(text)
    assert POLICY.redact_text(once) == once


# Text that cannot hold a secret: no '@', no ':', no '=', no number of
# more than 12 digits nor two numbers joined by a space or a dash, and none
# of the letters that spell `bearer`, `authorization`, `password` (b, w, z).
_WORDS = st.text("acdefghijklmnopqrstuvxy", min_size=1, max_size=10)
_NUMBERS = st.integers(0, 10**12 - 1).map(str)
_AFTER_NUMBER = st.sampled_from([", ", ". ", "; ", ") ", "\n", "}", "]"])
_PUNCTUATION = st.sampled_from(
    [" ", ", ", ". ", "; ", " - ", " (", ") ", "{", "}", "[", "]", "'", '"', "\n"]
)


@st.composite
def plain_texts(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(
            st.one_of(
                st.tuples(_WORDS, _PUNCTUATION), st.tuples(_NUMBERS, _AFTER_NUMBER)
            ),
            max_size=20,
        )
    )
    return "".join(word + gap for word, gap in parts)


@settings(max_examples=300)
@given(plain_texts())
def test_text_without_secrets_is_left_unchanged(text: str) -> None:
    assert POLICY.redact_text(text) == text


@settings(max_examples=200)
@given(JSON)
def test_json_without_secrets_is_left_unchanged(document: Any) -> None:
    assert POLICY.redact(document) == document


@settings(max_examples=200)
@given(st.text("0123456789", min_size=12, max_size=18))
def test_a_number_that_fails_the_luhn_check_is_kept(body: str) -> None:
    valid = _with_check_digit(body)
    invalid = body + str((int(valid[-1]) + 1) % 10)
    assert DEFAULT.redact_text(f"order {invalid} shipped") == f"order {invalid} shipped"
    assert DEFAULT.redact_text(f"card {valid} used") == f"card {mark('card')} used"


@given(emails(), emails())
def test_a_mark_tells_what_was_removed_and_nothing_of_its_length(
    first: str, second: str
) -> None:
    assert DEFAULT.redact_text(first) == DEFAULT.redact_text(second) == mark("email")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "postgresql://ledger:hunter2@db.example.com:5432/app",
            "postgresql://ledger:[redacted:url_password]@db.example.com:5432/app",
        ),
        ("redis://:hunter2@cache/0", "redis://:[redacted:url_password]@cache/0"),
        (
            "host=db password=hunter2 user=x",
            "host=db password=[redacted:url_password] user=x",
        ),
        ("Authorization: Bearer abc.def.ghi-123", "Authorization: [redacted:bearer]"),
        (
            '{"authorization": "Basic dXNlcjpwYXNz"}',
            '{"authorization": "[redacted:bearer]"}',
        ),
        (
            "sent with Bearer abcdefgh12345678 ok",
            "sent with Bearer [redacted:bearer] ok",
        ),
        ("mail ops.team+x@mail.example.co.uk.", "mail [redacted:email]."),
        ("card 4111 1111 1111 1111 exp 12/29", "card [redacted:card] exp 12/29"),
        ("card 4111-1111-1111-1111 cvv 123", "card [redacted:card] cvv 123"),
        ("ticket TKT-123456 opened", "ticket [redacted:ticket] opened"),
        ("zip_secret=abc, other=1", "zip_secret=[redacted], other=1"),
    ],
)
def test_what_each_rule_finds_and_what_it_keeps(text: str, expected: str) -> None:
    assert POLICY.redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "ops@example decided",  # how operators name themselves: no TLD
        "run 2f0c9e0a-3b1d-4c2e-9f3a-6b7c8d9e0f1a at 2024-01-05T12:34:56.123456+00:00",
        "sha256 4d5f0e8c2b4a1f1234567890123456789012345678abcd",
        "version 4.111.111.111 and 3.14159265358979",
        "the bearer of bad news",
        "http://localhost:8080/path?q=1",
    ],
)
def test_ids_times_digests_and_prose_are_kept(text: str) -> None:
    assert DEFAULT.redact_text(text) == text


def test_fields_at_any_depth_and_whatever_their_case() -> None:
    policy = Redaction(fields={"SSN"})
    payload = {"a": [{"Ssn": "1"}, {"b": {"ssn": {"nested": 2}}}], "ssnx": "kept"}
    assert policy.redact(payload) == {
        "a": [{"Ssn": REDACTED}, {"b": {"ssn": REDACTED}}],
        "ssnx": "kept",
    }


def test_paths_with_stars_list_items_and_lists_looked_through() -> None:
    policy = Redaction(
        paths=["card.number", "customer.*.email", "items[0].sku", "people.name"],
        builtins=(),
    )
    payload = {
        "card": {"number": "n", "expiry": "e"},
        "customer": [{"email": "a"}, {"email": "b", "x": 1}],
        "items": [{"sku": "s0"}, {"sku": "s1"}],
        "people": [{"name": "p"}, {"name": "q"}],
        "other": {"card": {"number": "deeper is not the path"}},
    }
    assert policy.redact(payload) == {
        "card": {"number": REDACTED, "expiry": "e"},
        "customer": [{"email": REDACTED}, {"email": REDACTED, "x": 1}],
        "items": [{"sku": REDACTED}, {"sku": "s1"}],
        "people": [{"name": REDACTED}, {"name": REDACTED}],
        "other": {"card": {"number": "deeper is not the path"}},
    }


def test_a_card_number_sent_as_a_number_is_found() -> None:
    assert DEFAULT.redact({"card": 4111111111111111, "id": 4111111111111112}) == {
        "card": mark("card"),
        "id": 4111111111111112,
    }


@pytest.mark.parametrize(
    ("make", "fix"),
    [
        (lambda: Redaction(patterns={"bad": "("}), "not a valid regular expression"),
        (lambda: Redaction(patterns={"any": "x*"}), "matches empty text"),
        (lambda: Redaction(patterns={"Bad Name": "x"}), "lowercase letters"),
        (lambda: Redaction(patterns={"email": "x"}), "a built-in's"),
        (lambda: Redaction(paths=["card..number"]), "single dots"),
        (lambda: Redaction(builtins=["phone"]), "the built-ins are"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_naming_the_fix(
    make: Any, fix: str
) -> None:
    with pytest.raises(RedactionError, match=fix):
        make()


def test_a_merge_only_adds() -> None:
    ledger_wide = Redaction(fields={"a"}, builtins=["email"])
    job = Redaction(fields={"b"}, paths=["x.y"], builtins=())
    merged = ledger_wide.merged(job)
    assert merged.fields == {"a", "b"}
    assert merged.paths == ("x.y",)
    assert merged.builtins == {"email"}
    assert NOTHING.merged(DEFAULT) == DEFAULT


def test_a_job_adds_to_the_policy_in_force_and_keeps_its_sensitive_fields() -> None:
    from ledger import Job

    class Secretive(Job):
        name = "secretive"
        version = "1"
        sensitive_fields = frozenset({"token"})
        redaction = Redaction(fields={"pin"}, builtins=())

        def open(self, context: Any) -> Any:
            return []

    with enforced(Redaction(fields={"ssn"}, builtins=["email"])):
        assert Secretive().redact(
            {
                "token": "t",
                "pin": "p",
                "ssn": "s",
                "mail": "a@b.example.com",
                "c": "4111111111111111",
            }
        ) == {
            "token": REDACTED,
            "pin": REDACTED,
            "ssn": REDACTED,
            "mail": mark("email"),
            "c": "4111111111111111",
        }
    assert in_force() == DEFAULT


def test_an_effect_result_holding_a_secret_is_not_kept() -> None:
    assert _keepable({"sent": "ok"}) == (True, {"sent": "ok"}, "")
    kept, recorded, why = _keepable({"sent_to": "alice@example.com"})
    assert (kept, recorded) == (False, None)
    assert "redaction" in why


def test_the_output_guard_keeps_who_decided_and_redacts_the_rest() -> None:
    document = {
        "by": "alice@example.com",
        "actions": [{"by": "bob@example.com", "reason": "asked by bob@example.com"}],
        "payload": {"vault": {"a": {"key": "k"}}},
    }
    put_in_force(POLICY)
    assert shown(document) == {
        "by": "alice@example.com",
        "actions": [{"by": "bob@example.com", "reason": f"asked by {mark('email')}"}],
        "payload": {"vault": {"a": {"key": REDACTED}}},
    }


def test_logs_are_redacted_ours_and_the_libraries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "tok_0123456789abcdef"
    put_in_force(Redaction(fields={"zip_secret"}))

    # The ledger routes the libraries' records only when the root logger
    # has no handler of the host's: here, pytest's are set aside a while.
    root = logging.getLogger()
    hosts = list(root.handlers)
    for handler in hosts:
        root.removeHandler(handler)
    configure_logging("debug")
    try:
        structlog.get_logger("test").warning(
            "call.failed",
            error=f"Authorization: Bearer {secret}",
            row={"zip_secret": "hidden-value"},
        )
        logging.getLogger("some.library").critical("dsn postgresql://u:%s@h/db", secret)
        try:
            raise ValueError(f"refused Bearer {secret}")
        except ValueError:
            structlog.get_logger("test").exception("crashed")
    finally:
        configure_logging("error")
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in hosts:
            root.addHandler(handler)
    err = capsys.readouterr().err
    assert "call.failed" in err
    assert "crashed" in err
    assert "postgresql://u:[redacted:url_password]@h/db" in err
    assert secret not in err
    assert "hidden-value" not in err


def test_the_log_processor_redacts_every_value_but_the_private_ones() -> None:
    from ledger.logs import redact_record

    record = {
        "event": "call",
        "url": "https://u:pw123456@h/",
        "rows": [{"n": 1, "mail": "a@b.example.com"}],
        "_record": "kept",
    }
    assert redact_record(None, "info", record) == {
        "event": "call",
        "url": f"https://u:{mark('url_password')}@h/",
        "rows": [{"n": 1, "mail": mark("email")}],
        "_record": "kept",
    }
