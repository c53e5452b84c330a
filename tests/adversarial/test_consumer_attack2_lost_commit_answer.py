"""Adversarial: the answer to a committed ledger transaction is lost.

README, "Ledger outages": "A save whose answer was lost is read back, never
recorded twice." `ConsumerRecorder._commit` reads the run back after a
`LedgerUnavailable`. But the `eventsourcing` library's PostgreSQL recorder
retries `insert_events` by itself (`@retry((InterfaceError,
OperationalError), max_attempts=10)`) on a fresh connection before the
consumer ever sees the outage. When the first try committed and only its
answer was lost, the retry runs the same transaction again and the store
refuses it: the tracking upsert does not move forward (IntegrityError ->
`PositionRefused`), or the run's event version is taken (IntegrityError ->
`Superseded`). The consumer then takes its own committed checkpoint for
another consumer's, or stops as "superseded by another worker".

The ledger is reached through a proxy on 127.0.0.1 that the test starts.
It forwards the PostgreSQL protocol as is, except that, when armed, it
lets the server commit and then cuts the connection instead of passing on
the server's `CommandComplete COMMIT`: exactly an answer lost on the way.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
from conftest import ledger_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from kafka_support import (
    ConsumerProcess,
    create_topic,
    kafka_committed,
    ledger_positions,
    new_names,
    produce,
    require_broker,
    sink_rows,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

COUNT = 100
SLOW = 50  # the message whose handler waits for the test (the `stall` poison)

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


class CommitAnswerDropper:
    """Forwards 127.0.0.1:<port> to PostgreSQL; when armed, swallows the
    server's answer to a COMMIT and cuts that connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.skip = 0  # COMMIT answers still to pass before dropping one
        self.armed = False
        self.dropped = 0
        self.commits_seen = 0
        self.sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def arm(self, skip: int = 0) -> None:
        """Drops the answer of the (skip + 1)th COMMIT from now on."""
        with self.lock:
            self.skip = skip
            self.armed = True

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        with self.lock:
            self.sockets |= {client, upstream}
        try:
            # Encryption requests are answered here ("no"), so that the rest
            # of the conversation is plain protocol messages.
            while True:
                head = _read_exactly(client, 8)
                length, code = struct.unpack("!ii", head)
                if length == 8 and code in (_SSL_REQUEST, _GSSENC_REQUEST):
                    client.sendall(b"N")
                    continue
                upstream.sendall(head + _read_exactly(client, length - 8))
                break
        except OSError:
            self._close(client, upstream)
            return
        threading.Thread(
            target=self._pump_raw, args=(client, upstream), daemon=True
        ).start()
        self._pump_answers(upstream, client)

    def _pump_raw(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source, sink)

    def _pump_answers(self, server: socket.socket, client: socket.socket) -> None:
        buffer = b""
        try:
            while data := server.recv(65536):
                buffer += data
                out = b""
                while len(buffer) >= 5:
                    kind = buffer[:1]
                    (length,) = struct.unpack("!i", buffer[1:5])
                    if len(buffer) < 1 + length:
                        break
                    message, buffer = buffer[: 1 + length], buffer[1 + length :]
                    if kind == b"C" and message[5:].startswith(b"COMMIT\x00"):
                        with self.lock:
                            self.commits_seen += 1
                            drop = self.armed and self.skip == 0
                            if self.armed and not drop:
                                self.skip -= 1
                            if drop:
                                self.armed = False
                                self.dropped += 1
                        if drop:
                            # Committed on the server; the client never hears.
                            client.sendall(out)
                            self._close(server, client)
                            return
                    out += message
                if out:
                    client.sendall(out)
        except OSError:
            pass
        finally:
            self._close(server, client)

    def _close(self, *ends: socket.socket) -> None:
        for end in ends:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                end.close()

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            self._close(*self.sockets)


@pytest.fixture
def dropper(postgres_url: str) -> Iterator[tuple[CommitAnswerDropper, str]]:
    parts = urlsplit(postgres_url)
    assert parts.hostname
    assert parts.port
    proxy = CommitAnswerDropper((parts.hostname, parts.port))
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    try:
        yield proxy, urlunsplit(parts._replace(netloc=netloc))
    finally:
        proxy.close()


def _consume_with_lost_answer(
    proxy: CommitAnswerDropper, url: str, folder: Path, *, skip: int, batch: int
) -> tuple[ConsumerProcess, str, str]:
    """Runs the consumer over COUNT messages; while message SLOW is being
    handled, arms the proxy to lose the answer of the (skip + 1)th COMMIT
    that follows (the first is that batch's checkpoint)."""
    require_broker()
    topic, group = new_names("attack2-lost-answer")
    create_topic(topic, 1)
    produce(
        topic,
        [{"n": n, **({"poison": "stall"} if n == SLOW else {})} for n in range(COUNT)],
        1,
    )
    release = folder / "release"
    reached = release.with_suffix(".reached")
    consumer = ConsumerProcess(
        url=url, topic=topic, group=group, sink=folder / "sink.sqlite",
        member="lost-answer", folder=folder, until_idle=2,
        env={"STREAM_STALL_FILE": str(release), "STREAM_BATCH": str(batch)},
    )  # fmt: skip
    wait_until(reached.exists, "the consumer to reach the slow message", 90)
    proxy.arm(skip=skip)
    release.write_text("go")
    wait_until(lambda: proxy.dropped, "the proxy to drop a COMMIT answer", 60)
    return consumer, topic, group


def _history(url: str, folder: Path, run_id: str) -> dict:  # type: ignore[type-arg]
    shown = ledger_command(["history", run_id, "--json"], url=url, cwd=folder)
    assert shown.returncode == 0, shown.stderr
    return orjson.loads(shown.stdout)  # type: ignore[no-any-return]


def test_a_checkpoint_whose_answer_was_lost_is_not_superseded(
    tmp_path: Path, dropper: tuple[CommitAnswerDropper, str]
) -> None:
    """The checkpoint of the batch holding message SLOW commits; its answer
    is lost. The consumer must read it back and go on: no refused
    checkpoint in the history, its own position not taken for another
    consumer's, Kafka's committed offset in line with the ledger."""
    proxy, url = dropper
    consumer, topic, group = _consume_with_lost_answer(
        proxy, url, tmp_path, skip=0, batch=200
    )
    assert consumer.wait(timeout=180) == 0, consumer.tail()

    summary = consumer.summary()
    rows = sink_rows(tmp_path / "sink.sqlite")
    assert sorted(off for _, off, _, _ in rows) == list(range(COUNT))
    assert ledger_positions(url, group, topic) == {0: COUNT}

    # Nothing but this consumer ever touched the group.
    history = _history(url, tmp_path, summary["run_id"])
    refused = [item for a in history["attempts"] for item in a["superseded"]]
    assert refused == [], f"its own checkpoint was taken for another's: {refused}"
    assert summary["superseded"] == 0, summary
    assert kafka_committed(group, topic) == {0: COUNT}, (
        "the Kafka commit of the checkpoint was skipped"
    )
    shown = ledger_command(["status", "--json"], url=url, cwd=tmp_path)
    (run,) = orjson.loads(shown.stdout)
    states = {p["partition"]: p["state"] for p in run["consumer"]["partitions"]}
    assert states == {f"{topic}[0]": "assigned"}, states


def test_a_batch_start_whose_answer_was_lost_does_not_stop_the_consumer(
    tmp_path: Path, dropper: tuple[CommitAnswerDropper, str]
) -> None:
    """Batches of 60: the second COMMIT after message SLOW is the next
    batch's `MessagesStarted`. Its answer is lost. The consumer must read it
    back and go on, not stop as if another worker had taken its run over
    (which also leaves the batch open, to be counted as a crash next time)."""
    proxy, url = dropper
    consumer, topic, group = _consume_with_lost_answer(
        proxy, url, tmp_path, skip=1, batch=60
    )
    code = consumer.wait(timeout=180)
    log = consumer.log.read_text()
    assert code == 0, f"exit code {code}: {log.strip().splitlines()[-1]}"
    assert "superseded by another worker" not in log
    assert consumer.summary()["messages"] == COUNT
    assert ledger_positions(url, group, topic) == {0: COUNT}
    assert kafka_committed(group, topic) == {0: COUNT}
