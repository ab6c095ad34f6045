"""A scripted stand-in for the gateway: a real HTTP server on loopback that answers each request with the
next step of a script (a status and body, a dropped connection, a stall) and records what it received."""
from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

MASTER_KEY = b"unit-master-key-0123456789abcdef"
KID = "k1"


@dataclass
class Received:
    headers: dict[str, str]  # lower-case names
    raw: bytes  # as sent on the wire
    doc: dict  # the decoded JSON body


def accept_all(doc: dict) -> tuple[int, dict, dict]:
    return 200, {"accepted": len(doc["batch"]), "duplicates": 0, "no_consent": 0, "rejected": []}, {}


class ScriptedGateway:
    """``script`` items: ``(status, body_dict[, headers])``, ``"drop"`` (read the request, close without an
    answer), ``("stall", seconds)``, or a callable ``doc -> (status, body, headers)``. When the script is
    empty every batch is accepted."""

    def __init__(self) -> None:
        self.script: list = []
        self.received: list[Received] = []
        self._lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                data = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                doc = json.loads(data)
                with gateway._lock:
                    gateway.received.append(Received({k.lower(): v for k, v in self.headers.items()}, raw, doc))
                    step = gateway.script.pop(0) if gateway.script else accept_all
                if step == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(step, tuple) and step[0] == "stall":
                    time.sleep(step[1])
                    step = accept_all
                status, body, headers = step(doc) if callable(step) else (*step, {})[:3]
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def events(self) -> list[dict]:
        return [event for r in self.received for event in r.doc["batch"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway():
    server = ScriptedGateway()
    yield server
    server.close()


@pytest.fixture
def make_client(tmp_path):
    """``make_client(url, **options)``: an AnalyticsClient without a background thread and with fast backoff."""
    from headwater_client import AnalyticsClient

    made = []

    def build(url: str, **options):
        settings = {"device_id": "dev-unit", "kid": KID, "master_key": MASTER_KEY,
                    "queue_path": tmp_path / "queue.sqlite3", "flush_interval": 0, "backoff_base": 0.01,
                    "backoff_max": 0.05, "timeout": 2.0, **options}
        client = AnalyticsClient(url, **settings)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close(timeout=0.5)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
