"""Sealed payloads: a quarantined record's whole payload, kept encrypted.

A quarantine event keeps the record twice. `payload` is a preview for
people: redacted by the job's `sensitive_fields` and cut to 2,000
characters. `sealed` is the whole record, unredacted and uncut, for a
promotion that can no longer read it from its source: its JSON encrypted
with AES-256-GCM under a random key made for that one record. The key
lives in the key table (`ledger.payload_keys`), never in an event.

Destroying a record's key (a discard, an archived run) makes its sealed
payload unreadable for good, while the event that holds it, the preview,
the reason and every decision stay exactly as they were recorded: the
audit trail is intact and the hash chains still verify.

The associated data of each ciphertext names its run, its quarantine id
and its key, so a sealed payload copied into another record's event does
not open. When LEDGER_MASTER_KEY is set (32 random bytes, base64 or hex),
each record's key is stored wrapped by it, so the key table alone (a
dump, a backup) opens nothing; the table records the master key's
fingerprint, so a wrong or missing master key is named, never used.

This module seals and opens; `ledger.sealed_payloads` says which
records are sealed, opens them for promotions and destroys their keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import orjson
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.errors import LedgerError
from ledger.payload_keys import KeyTable, PayloadKey

if TYPE_CHECKING:
    from ledger.store import Ledger

__all__ = [
    "ALGORITHM",
    "MASTER_KEY_ENV",
    "SEALED_PAYLOAD_MAX_BYTES",
    "MasterKeyError",
    "PayloadDestroyed",
    "PayloadKeyMissing",
    "PayloadTampered",
    "SealedPayloadError",
    "check_master_key",
    "destroy_payload_keys",
    "master_key_fingerprint",
    "open_sealed",
    "seal_payloads",
    "shown_time",
]

log = structlog.get_logger(__name__)

ALGORITHM = "AES-256-GCM"
MASTER_KEY_ENV = "LEDGER_MASTER_KEY"

# A record whose JSON is larger is not sealed (its preview is still kept),
# so that one huge record cannot bloat the ledger.
SEALED_PAYLOAD_MAX_BYTES = 1 << 20

_NONCE_BYTES = 12
_GENERATE = (
    "python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'"
)


class MasterKeyError(LedgerError):
    """LEDGER_MASTER_KEY is malformed, missing or not the one a key needs."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem


class SealedPayloadError(LedgerError):
    """A record's sealed payload cannot be opened; `why` says why in words
    that fit inside a sentence."""

    def __init__(self, run_id: str, quarantine_id: str, why: str, fix: str) -> None:
        super().__init__(
            f"the sealed payload of record {quarantine_id} of run {run_id} cannot "
            f"be opened: {why}; {fix}"
        )
        self.run_id = run_id
        self.quarantine_id = quarantine_id
        self.why = why


class PayloadDestroyed(SealedPayloadError):
    """The record's key was destroyed: its payload is gone for good."""

    def __init__(
        self, run_id: str, quarantine_id: str, destroyed_at: str, destroyed_why: str
    ) -> None:
        super().__init__(
            run_id,
            quarantine_id,
            f"its key was destroyed at {shown_time(destroyed_at)} ({destroyed_why}), "
            "so the payload can never be read again",
            "a destroyed key is never restored: discard the record, or rerun its "
            "step from a source that still holds it",
        )
        self.destroyed_at = destroyed_at
        self.destroyed_why = destroyed_why


class PayloadTampered(SealedPayloadError):
    """The sealed payload or its key's row does not match the record."""

    def __init__(self, run_id: str, quarantine_id: str, why: str) -> None:
        super().__init__(
            run_id,
            quarantine_id,
            why,
            f"`ledger verify {run_id[:8]}` names events changed after they were "
            "recorded; the payload cannot be trusted, so discard the record or "
            "rerun its step",
        )


class PayloadKeyMissing(SealedPayloadError):
    """No row of the key table holds the key the sealed payload names."""

    def __init__(self, run_id: str, quarantine_id: str, key_id: str) -> None:
        super().__init__(
            run_id,
            quarantine_id,
            f"its key {key_id} is not in the key table (restored from a backup "
            "older than the record, or the payload was copied from another "
            "ledger)",
            "restore the key table from a backup that holds that key, or discard "
            "the record",
        )


@dataclass(frozen=True)
class _MasterKey:
    key: bytes
    fingerprint: str


def master_key_fingerprint(key: bytes) -> str:
    """A name for a master key that reveals nothing of it."""
    return hashlib.sha256(b"recovery-ledger:master-key\n" + key).hexdigest()[:16]


def _master_key() -> _MasterKey | None:
    """LEDGER_MASTER_KEY, decoded; None when unset. Its value is never
    shown, not even in the error that refuses it."""
    text = os.environ.get(MASTER_KEY_ENV, "").strip()
    if not text:
        return None
    key = _decode_key(text)
    if key is None or len(key) != 32:
        raise MasterKeyError(
            f"{MASTER_KEY_ENV} is not a 256-bit key (32 bytes as 64 hex digits "
            "or base64)",
            f"set it to a key made with `{_GENERATE}`, or unset it",
        )
    return _MasterKey(key, master_key_fingerprint(key))


def check_master_key() -> None:
    """Refuses a malformed LEDGER_MASTER_KEY before a command records
    anything, rather than when a record is first quarantined."""
    _master_key()


def _decode_key(text: str) -> bytes | None:
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    standard = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _payload_aad(run_id: str, quarantine_id: str, key_id: str) -> bytes:
    text = f"recovery-ledger:sealed-payload:v1\n{run_id}\n{quarantine_id}\n{key_id}"
    return text.encode()


def _key_aad(key: PayloadKey) -> bytes:
    return (
        f"recovery-ledger:payload-key:v1\n{key.run_id}\n{key.quarantine_id}\n"
        f"{key.key_id}"
    ).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def shown_time(moment: str) -> str:
    return f"{moment[:19].replace('T', ' ')} UTC"


def seal_payloads(
    ledger: Ledger, run_id: UUID | str, payloads: Mapping[str, Any]
) -> dict[str, dict[str, str]]:
    """Seals each record's whole payload (by quarantine id) under a new key.

    The keys are stored, in one transaction, before this returns: the
    caller then records the sealed payloads in its events. A crash in
    between leaves keys no event names; a discard of the record, or
    `sweep_payload_keys`, destroys them. A payload that is None, that JSON
    cannot hold, or whose JSON is over SEALED_PAYLOAD_MAX_BYTES is left
    out: the record then keeps only its preview.
    """
    master = _master_key()
    run = str(run_id)
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    keys: list[PayloadKey] = []
    sealed: dict[str, dict[str, str]] = {}
    for quarantine_id, payload in payloads.items():
        plaintext = _encoded(run, quarantine_id, payload)
        if plaintext is None:
            continue

        # A fresh key and nonce for every record: nothing is ever reused.
        key_id = str(uuid4())
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE_BYTES)
        aad = _payload_aad(run, quarantine_id, key_id)
        ciphertext = AESGCM(key).encrypt(nonce, plaintext, aad)

        row = PayloadKey(key_id, run, quarantine_id, key, None, now)
        if master is not None:
            wrap_nonce = os.urandom(_NONCE_BYTES)
            wrapped = AESGCM(master.key).encrypt(wrap_nonce, key, _key_aad(row))
            row = PayloadKey(
                key_id, run, quarantine_id, wrap_nonce + wrapped,
                master.fingerprint, now,
            )  # fmt: skip
        keys.append(row)
        sealed[quarantine_id] = {
            "alg": ALGORITHM,
            "key_id": key_id,
            "nonce": _b64(nonce),
            "ciphertext": _b64(ciphertext),
        }
    KeyTable(ledger).insert(keys)
    return sealed


def _encoded(run_id: str, quarantine_id: str, payload: Any) -> bytes | None:
    if payload is None:
        return None
    try:
        plaintext = orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as error:
        log.warning(
            "quarantine.payload_not_sealed",
            run_id=run_id,
            quarantine_id=quarantine_id,
            why=str(error),
        )
        return None
    if len(plaintext) > SEALED_PAYLOAD_MAX_BYTES:
        log.warning(
            "quarantine.payload_not_sealed",
            run_id=run_id,
            quarantine_id=quarantine_id,
            why=f"{len(plaintext):,} bytes of JSON, over {SEALED_PAYLOAD_MAX_BYTES:,}",
        )
        return None
    return plaintext


def open_sealed(
    ledger: Ledger, run_id: UUID | str, quarantine_id: str, sealed: Mapping[str, Any]
) -> Any:
    """The whole payload a quarantine event sealed, decrypted; raises a
    SealedPayloadError (or MasterKeyError) naming why it cannot be."""
    run = str(run_id)

    # The sealed payload as the event holds it.
    try:
        key_id = str(sealed["key_id"])
        nonce = base64.b64decode(sealed["nonce"], validate=True)
        ciphertext = base64.b64decode(sealed["ciphertext"], validate=True)
        algorithm = sealed["alg"]
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise PayloadTampered(
            run, quarantine_id, "the event's sealed payload is malformed"
        ) from None
    if algorithm != ALGORITHM or len(nonce) != _NONCE_BYTES:
        raise PayloadTampered(
            run, quarantine_id, f"the event's sealed payload is not {ALGORITHM}"
        )

    # Its key, which must be this record's own, and still held.
    row = KeyTable(ledger).get(key_id)
    if row is None:
        raise PayloadKeyMissing(run, quarantine_id, key_id)
    if (row.run_id, row.quarantine_id) != (run, quarantine_id):
        raise PayloadTampered(
            run,
            quarantine_id,
            f"it names key {key_id}, which belongs to record {row.quarantine_id} "
            f"of run {row.run_id}: the sealed payload was copied from there",
        )
    if row.key_bytes is None:
        raise PayloadDestroyed(
            run, quarantine_id, row.destroyed_at or "", row.destroyed_why or ""
        )
    key = _unwrapped(row)

    # Decrypted and checked against the record it claims to be.
    try:
        plaintext = AESGCM(key).decrypt(
            nonce, ciphertext, _payload_aad(run, quarantine_id, key_id)
        )
    except InvalidTag:
        raise PayloadTampered(
            run,
            quarantine_id,
            "its ciphertext does not authenticate under its key for this record "
            "(changed after it was recorded, or sealed for another record)",
        ) from None
    return orjson.loads(plaintext)


def _unwrapped(row: PayloadKey) -> bytes:
    """The record's key: as stored, or unwrapped by the master key that
    wrapped it, which must be the one LEDGER_MASTER_KEY holds now."""
    assert row.key_bytes is not None
    if row.wrapped_by is None:
        return row.key_bytes
    fix = (
        f"set {MASTER_KEY_ENV} to master key {row.wrapped_by} (the one set when "
        "the record was quarantined) and try again"
    )
    master = _master_key()
    if master is None:
        raise MasterKeyError(
            f"the key of record {row.quarantine_id} is wrapped by master key "
            f"{row.wrapped_by}, and {MASTER_KEY_ENV} is not set",
            fix,
        )
    if master.fingerprint != row.wrapped_by:
        raise MasterKeyError(
            f"{MASTER_KEY_ENV} holds master key {master.fingerprint}, but the key "
            f"of record {row.quarantine_id} is wrapped by master key "
            f"{row.wrapped_by}",
            fix,
        )
    try:
        return AESGCM(master.key).decrypt(
            row.key_bytes[:_NONCE_BYTES], row.key_bytes[_NONCE_BYTES:], _key_aad(row)
        )
    except InvalidTag:
        raise PayloadTampered(
            row.run_id,
            row.quarantine_id,
            f"its key's row in the key table was changed (key {row.key_id} does "
            "not unwrap under its master key)",
        ) from None


def destroy_payload_keys(
    ledger: Ledger,
    run_id: UUID | str,
    quarantine_ids: Collection[str] | None = None,
    *,
    why: str = "its run was archived",
) -> list[str]:
    """Destroys the keys of a run's sealed payloads: of the records named,
    or of every record of the run (what archiving a run calls). Returns
    the quarantine ids whose keys were destroyed now.

    Idempotent: keys already destroyed keep their time and reason, so it
    may be called again after a crash, or for records that never had one.
    Nothing in the events changes.
    """
    destroyed = KeyTable(ledger).destroy(str(run_id), quarantine_ids, why)
    if destroyed:
        log.info(
            "payload_keys.destroyed",
            run_id=str(run_id),
            records=len(destroyed),
            why=why,
        )
    return destroyed
