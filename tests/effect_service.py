"""A downstream for effect tests: an HTTP service on 127.0.0.1 that counts.

Every call is a `POST` carrying an `Idempotency-Key` header and an
`X-Record` header (the record it is made for). The service counts calls
per key and per record, and applies them in one of two ways:

- honouring keys: a key is applied at most once; a repeat gets the first
  call's answer back, and changes nothing;
- ignoring keys: every call is applied, as a downstream without keys does.

A call counts from the moment its body is read in full: a caller killed
before that never reached the service. The answer, `{"applied": n}`, names
the nth application the service made.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

__all__ = ["EffectService", "ServiceCounts", "effect_service"]


@dataclass(frozen=True)
class ServiceCounts:
    """What the service has seen, copied at one moment."""

    calls_by_key: Counter[str] = field(default_factory=Counter)
    calls_by_record: Counter[int] = field(default_factory=Counter)
    applied_by_key: Counter[str] = field(default_factory=Counter)
    applied_by_record: Counter[int] = field(default_factory=Counter)

    # The answer each key got first, and gets again when keys are honoured.
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(self.calls_by_key.values())

    @property
    def duplicates(self) -> int:
        """Calls beyond the first, per key: what a replay sent again."""
        return sum(n - 1 for n in self.calls_by_key.values())

    @property
    def applied_twice(self) -> int:
        """Applications beyond the first, per record: real duplicates."""
        return sum(n - 1 for n in self.applied_by_record.values() if n > 1)


class EffectService:
    """The counting downstream; see the module docstring."""

    def __init__(self, *, honours_keys: bool) -> None:
        self.honours_keys = honours_keys
        self._lock = threading.Lock()
        self._counted = threading.Condition(self._lock)
        self._counts = ServiceCounts()
        self._calls = 0
        self._applied = 0
        self._in_flight = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="effect-service", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/apply"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def counts(self) -> ServiceCounts:
        with self._lock:
            return ServiceCounts(
                Counter(self._counts.calls_by_key),
                Counter(self._counts.calls_by_record),
                Counter(self._counts.applied_by_key),
                Counter(self._counts.applied_by_record),
                dict(self._counts.answers),
            )

    def idle(self) -> bool:
        """No call is being handled: every call sent so far is counted."""
        with self._lock:
            return self._in_flight == 0

    def calls(self) -> int:
        with self._lock:
            return self._calls

    def wait_for_calls(self, count: int, timeout: float) -> bool:
        """Whether `count` calls arrived, waiting up to `timeout` seconds."""
        with self._counted:
            return self._counted.wait_for(lambda: self._calls >= count, timeout)

    def started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def apply(self, key: str, record: int) -> dict[str, Any]:
        """Counts one call and applies it, or answers a repeat as the first."""
        with self._lock:
            counts = self._counts
            self._calls += 1
            counts.calls_by_key[key] += 1
            counts.calls_by_record[record] += 1
            self._counted.notify_all()
            if self.honours_keys and key in counts.answers:
                return counts.answers[key]
            self._applied += 1
            counts.applied_by_key[key] += 1
            counts.applied_by_record[record] += 1
            answer = {"applied": self._applied}
            counts.answers.setdefault(key, answer)
            return answer


def _handler_for(service: EffectService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            service.started()
            try:
                self._answer()
            finally:
                service.finished()

        def _answer(self) -> None:
            key = self.headers.get("Idempotency-Key", "")
            record = self.headers.get("X-Record", "")
            length = int(self.headers.get("Content-Length", "0"))

            # A body cut short means the caller died while sending: the call
            # never arrived, so it is neither counted nor applied.
            body = self.rfile.read(length)
            if not key or not record.isdigit() or len(body) < length:
                self.send_error(400, "needs Idempotency-Key and X-Record")
                return
            payload = orjson.dumps(service.apply(key, int(record)))
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the caller was killed after sending: the call counts

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def effect_service(*, honours_keys: bool) -> Iterator[EffectService]:
    """A running service, stopped on the way out."""
    service = EffectService(honours_keys=honours_keys)
    service.start()
    try:
        yield service
    finally:
        service.stop()
