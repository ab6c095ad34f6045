"""Helpers for the gateway's integration tests: a signed client, topic reading, and a TCP proxy that can
cut a client off from its Kafka broker and restore it (a network partition without losing broker data)."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from headwater.procs import stop_process_group
from headwater.settings import Secret
from ingest_gateway.signing import sign_request

MASTER_KEY = b"integration-master-key-32-bytes!"
KID = "it-1"
ADMIN_TOKEN = "integration-admin-token"
PARTITIONS = 4


def gateway_settings(base, tmp_path: Path, **updates):
    """``base`` (the devstack settings) plus a signing key, an admin token and a private data dir."""
    return base.model_copy(update={"hmac_keys": Secret({KID: MASTER_KEY}), "admin_token": Secret(ADMIN_TOKEN),
                                   "data_dir": tmp_path, **updates})


def make_event(**fields) -> dict:
    event = {"event": "page_viewed", "event_id": str(uuid.uuid4()), "timestamp": "2026-12-03T12:00:00Z",
             "user_id": f"u-{uuid.uuid4().hex[:12]}", "device_id": "it-device",
             "properties": {"url": "https://example.com/pricing", "path": "/pricing"}}
    event.update(fields)
    return event


def post_batch(client, events: list[dict], *, device: str = "it-device", headers: dict | None = None,
               timestamp: int | None = None, **body_fields):
    body = orjson.dumps({"sent_at": "2026-12-03T12:00:01Z", "batch": events, **body_fields})
    signed = sign_request(body, device, KID, MASTER_KEY, timestamp=timestamp)
    return client.post("/analytics/collect", content=body,
                       headers={"Content-Type": "application/json", **signed, **(headers or {})})


@dataclass
class Record:
    partition: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


def read_topic(brokers: str, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every record of ``topic`` written before this call, from the beginning.

    A sentinel is written to each partition first; reading stops once all of them came back, which proves
    each partition was read to (at least) the point where this call started. Watermarks are not used:
    Tansu reports them wrongly after multi-record batches.
    """
    token = uuid.uuid4().hex.encode()
    producer = Producer({"bootstrap.servers": brokers, "acks": "all"})
    for partition in range(PARTITIONS):
        producer.produce(topic, b'{"sentinel":true}', partition=partition, headers=[("hw-test-sentinel", token)])
    assert producer.flush(15) == 0, "sentinels were not acknowledged"
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"it-read-{token.decode()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 10})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    out: list[Record] = []
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < PARTITIONS:
            assert time.monotonic() < deadline, f"read {topic}: sentinels of partitions {seen} only"
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                headers = dict(msg.headers() or ())
                if "hw-test-sentinel" in headers:
                    if headers["hw-test-sentinel"] == token:
                        seen.add(msg.partition())
                    continue
                out.append(Record(msg.partition(), msg.key(), msg.value(), headers))
    finally:
        consumer.close()
    return out


def records_for(records: list[Record], event_ids: set[str]) -> list[Record]:
    return [r for r in records if r.headers.get("hw-event-id", b"").decode() in event_ids]


def metric(text: str, sample: str) -> float:
    """The value of one sample, e.g. ``analytics_ingest_events_total{result="accepted"}``, 0 when absent."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CuttableProxy:
    """TCP proxy ``listen_port`` -> ``target_port``. ``cut()`` drops every connection and refuses new ones
    until ``restore()``: to the client, the broker vanished; the broker keeps its data."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port, self.target_port = listen_port, target_port
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", listen_port))
        self._server.listen(64)
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (socket.timeout, OSError):
                continue
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._server.close()


@contextlib.contextmanager
def private_broker(log_path: Path):
    """A Tansu broker of our own behind a :class:`CuttableProxy`; yields ``(bootstrap, proxy)``.

    The broker advertises the proxy's port, so every client connection goes through the proxy.
    """
    from headwater.devstack import tansu_binary

    broker_port, proxy_port = free_port(), free_port()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}", "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    proxy = CuttableProxy(proxy_port, broker_port)
    bootstrap = f"127.0.0.1:{proxy_port}"
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        deadline = time.monotonic() + 20
        while True:
            try:
                admin.list_topics(timeout=1)
                break
            except Exception:
                assert time.monotonic() < deadline and proc.poll() is None, "private Tansu broker did not start"
                time.sleep(0.2)
        topics = ["analytics.events.raw", "analytics.events.rejected"]
        for fut in admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=1)
                                        for t in topics], operation_timeout=10).values():
            fut.result(timeout=15)
        yield bootstrap, proxy
    finally:
        proxy.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


__all__ = ["ADMIN_TOKEN", "CuttableProxy", "KID", "MASTER_KEY", "gateway_settings", "make_event",
           "metric", "post_batch", "private_broker", "read_topic", "records_for"]


REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def gateway_process(env: dict[str, str], *args: str, timeout: float = 30.0, tls_context=None):
    """``headwater gateway`` as an operator runs it, on a free loopback port; yields its base URL once it answers
    (``/readyz`` 200 over HTTP, or ``/healthz`` over HTTPS verified against ``tls_context`` when given) and stops
    its whole process group afterwards.

    :param env: the complete environment of the process
    :param args: more command-line arguments, e.g. ``"--workers", "2"``
    """
    port = free_port()
    env = {k: v for k, v in env.items() if k != "HEADWATER_CONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "ingest_gateway.cli", "--host", "127.0.0.1", "--port", str(port),
                             *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"{'https' if tls_context else 'http'}://127.0.0.1:{port}"
    probe = base + ("/healthz" if tls_context else "/readyz")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(probe, timeout=5, context=tls_context) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, f"gateway did not answer at {probe}"
            time.sleep(0.3)
        yield base
    finally:
        stop_process_group(proc)
