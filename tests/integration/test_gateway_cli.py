"""``headwater gateway`` as an operator runs it: uvicorn, several workers, settings from the environment."""
from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request

import orjson
import pytest

from ingest_gateway.signing import sign_request
from tests.integration.gateway_support import KID, MASTER_KEY, gateway_process, make_event, read_topic, records_for

pytestmark = pytest.mark.integration


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_gateway_command_serves_with_two_workers(devstack, stack_settings, tmp_path):
    env = {**os.environ, **devstack.env(), "HEADWATER_DATA_DIR": str(tmp_path),
           "HEADWATER_HMAC_KEYS": f"{KID}:{base64.b64encode(MASTER_KEY).decode()}"}
    with gateway_process(env, "--workers", "2") as base:
        events = [make_event() for _ in range(4)]
        body = orjson.dumps({"batch": events})
        status, answer = http("POST", base + "/analytics/collect", body,
                              {"Content-Type": "application/json", **sign_request(body, "it-device", KID, MASTER_KEY)})
        assert status == 200 and orjson.loads(answer)["accepted"] == 4
        assert http("GET", base + "/healthz")[0] == 200
        status, text = http("GET", base + "/metrics")
        assert status == 200 and b"analytics_ingest_events_total" in text
        found = records_for(read_topic(stack_settings.kafka_brokers, "analytics.events.raw"),
                            {e["event_id"] for e in events})
        assert len(found) == 4
        # Each worker took a spool slot of its own.
        slots = sorted(p.name for p in (tmp_path / "gateway" / "spool").iterdir())
        assert slots == ["slot-0", "slot-1"]
