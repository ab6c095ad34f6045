"""An app wired to nothing that runs: Kafka at a closed port, in-process dedup, SQLite, a temp data dir."""
from __future__ import annotations

import base64
import socket
import uuid

import pytest
from starlette.testclient import TestClient

from headwater.settings import load_settings
from ingest_gateway.app import create_app
from ingest_gateway.options import GatewayOptions

MASTER_KEY = b"m" * 32
KID = "k1"
ADMIN_TOKEN = "admin-secret-token"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_event(**fields):
    event = {"event": "page_viewed", "event_id": str(uuid.uuid4()), "timestamp": "2026-12-03T12:00:00Z",
             "user_id": "u-1", "device_id": "dev-1", "properties": {"url": "https://example.com/a", "path": "/a"}}
    event.update(fields)
    return event


@pytest.fixture
def offline_client(tmp_path):
    """``client(**option_overrides)``: a started TestClient whose Kafka is unreachable."""
    clients = []

    def build(**overrides):
        settings = load_settings({
            "HEADWATER_KAFKA_BROKERS": f"127.0.0.1:{closed_port()}",
            "HEADWATER_DATA_DIR": str(tmp_path),
            "HEADWATER_HMAC_KEYS": f"{KID}:{base64.b64encode(MASTER_KEY).decode()}",
            "HEADWATER_ADMIN_TOKEN": ADMIN_TOKEN,
            "HEADWATER_MAX_BODY_BYTES": "65536",
            "HEADWATER_MAX_DECOMPRESSED_BYTES": "262144",
            "HEADWATER_MAX_EVENT_BYTES": "4096",
        })
        overrides.setdefault("delivery_timeout_ms", 300)
        client = TestClient(create_app(settings, options=GatewayOptions.from_settings(settings, **overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)
