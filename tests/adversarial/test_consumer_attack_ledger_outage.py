"""Adversarial: the ledger (PostgreSQL) becomes unreachable mid-batch.

The consumer reaches the ledger through a TCP proxy on 127.0.0.1 that the
test starts and can cut: every open connection is dropped and new ones are
closed at once, as a database failover or a network partition would.

- An outage shorter than LEDGER_OUTAGE_SECONDS is ridden out: nothing is
  checkpointed or committed meanwhile, and once the ledger answers again
  the consumer goes on, with no crash recorded and nothing quarantined.
- A longer one ends the process with one line naming the ledger, exit
  code 2, and no traceback.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
from conftest import ledger_command, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from kafka_support import (
    ConsumerProcess,
    create_topic,
    new_names,
    produce,
    require_broker,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

COUNT = 100
SLOW = 50  # the message whose handler takes a while (the `stall` poison)


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to the PostgreSQL server until cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.open = True
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for end in self.sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            self.sockets.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def proxied(postgres_url: str) -> Iterator[tuple[CuttableProxy, str]]:
    parts = urlsplit(postgres_url)
    assert parts.hostname
    assert parts.port
    proxy = CuttableProxy((parts.hostname, parts.port))
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    try:
        yield proxy, urlunsplit(parts._replace(netloc=netloc))
    finally:
        proxy.close()


def _cut_during_slow_message(
    proxy: CuttableProxy,
    url: str,
    topic: str,
    group: str,
    folder: Path,
    *,
    outage_seconds: float,
    until_idle: float | None = None,
) -> ConsumerProcess:
    """Starts the consumer, cuts the ledger while the slow message is being
    handled, and lets the handler finish."""
    release = folder / "release"
    reached = release.with_suffix(".reached")
    release.unlink(missing_ok=True)
    reached.unlink(missing_ok=True)
    consumer = ConsumerProcess(
        url=url, topic=topic, group=group, sink=folder / "sink.sqlite",
        member="outage", folder=folder, until_idle=until_idle,
        env={
            "STREAM_STALL_FILE": str(release),
            "LEDGER_OUTAGE_SECONDS": str(outage_seconds),
        },
    )  # fmt: skip
    wait_until(reached.exists, "the consumer to reach the slow message", 90)
    proxy.cut()
    release.write_text("go")
    return consumer


def _setup(tmp_path: Path) -> tuple[str, str]:
    require_broker()
    topic, group = new_names("attack-outage")
    create_topic(topic, 1)
    produce(
        topic,
        [{"n": n, **({"poison": "stall"} if n == SLOW else {})} for n in range(COUNT)],
        1,
    )
    return topic, group


def test_a_ledger_outage_at_checkpoint_ends_in_one_line(
    tmp_path: Path, proxied: tuple[CuttableProxy, str]
) -> None:
    """Guards against: eventsourcing's OperationalError escaping as a
    traceback with exit code 1 when the checkpoint cannot be saved."""
    proxy, url = proxied
    topic, group = _setup(tmp_path)

    consumer = _cut_during_slow_message(
        proxy, url, topic, group, tmp_path, outage_seconds=3
    )
    consumer.wait(timeout=180)
    proxy.restore()

    log = consumer.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert consumer.process.returncode == 2, log[-3000:]
    assert "cannot use the ledger" in log.strip().splitlines()[-1]


def test_a_short_ledger_outage_is_ridden_out(
    tmp_path: Path, proxied: tuple[CuttableProxy, str]
) -> None:
    """Guards against: a ledger outage recorded, at the next start, as a
    crash of the batch in flight (two such while the slow, healthy message
    is handled would quarantine it as a worker killer)."""
    proxy, url = proxied
    topic, group = _setup(tmp_path)

    # Cut while message 50 is handled; the consumer waits for the ledger.
    consumer = _cut_during_slow_message(
        proxy, url, topic, group, tmp_path, outage_seconds=120, until_idle=1.5
    )
    wait_until(
        lambda: consumer.logged("ledger.unavailable"),
        "the consumer to notice the outage",
        60,
    )
    proxy.restore()
    assert consumer.wait(timeout=180) == 0, consumer.tail()

    # Nothing was quarantined, no attempt crashed, every message is there.
    listed = ledger_command(["quarantine", "list", "--json"], url=url, cwd=tmp_path)
    assert orjson.loads(listed.stdout)["records"] == []
    history = ledger_command(
        ["history", consumer.summary()["run_id"], "--json"], url=url, cwd=tmp_path
    )
    outcomes = [a["outcome"] for a in orjson.loads(history.stdout)["attempts"]]
    assert outcomes == ["stopped"]
    assert consumer.summary()["messages"] == COUNT
