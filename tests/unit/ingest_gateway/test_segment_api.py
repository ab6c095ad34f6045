"""The Segment-compatible /v1 API over HTTP, without services (dark mode: nothing to publish to)."""
from __future__ import annotations

import base64
import gzip
import uuid

import orjson
import pytest
from starlette.testclient import TestClient

from headwater.settings import load_settings
from ingest_gateway.app import create_app
from ingest_gateway.options import GatewayOptions
from tests.unit.ingest_gateway.conftest import closed_port

WRITE_KEY = "wk-test-123"


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@pytest.fixture
def segment_client(tmp_path):
    settings = load_settings({"HEADWATER_KAFKA_BROKERS": f"127.0.0.1:{closed_port()}",
                              "HEADWATER_DATA_DIR": str(tmp_path), "HEADWATER_WRITE_KEYS": f"other,{WRITE_KEY}"})
    with TestClient(create_app(settings, options=GatewayOptions.from_settings(settings, dark_mode=True))) as client:
        yield client


def track(**fields):
    return {"type": "track", "event": "Community Join", "messageId": str(uuid.uuid4()), "userId": "u-1",
            "timestamp": "2026-12-03T12:00:00.000+00:00",
            "properties": {"communityId": "c-1", "joinSource": "search"}, **fields}


def test_write_key_is_required(segment_client):
    body = orjson.dumps({"batch": [track()]})
    r = segment_client.post("/v1/batch", content=body)
    assert r.status_code == 401 and r.json()["success"] is False and r.json()["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    r = segment_client.post("/v1/batch", content=body, headers=basic("wrong"))
    assert r.status_code == 401
    r = segment_client.post("/v1/batch", content=body, headers={"Authorization": "Basic !!!"})
    assert r.status_code == 401
    assert segment_client.post("/v1/batch", content=body, headers=basic(WRITE_KEY)).json()["success"] is True
    # writeKey in the body, as some SDKs send it
    r = segment_client.post("/v1/batch", content=orjson.dumps({"batch": [track()], "writeKey": WRITE_KEY}))
    assert r.status_code == 200 and r.json()["dark"] == 1


def test_batch_answers_per_event_in_segment_shape(segment_client):
    batch = [track(), track(event="Made Up Thing"), {"type": "group", "groupId": "g", "userId": "u"},
             {"type": "alias", "previousId": "a", "userId": "u"}, track(userId=None, anonymousId=None),
             {"type": "page", "anonymousId": "a-1", "properties": {"url": "https://example.com/p"}},
             {"type": "identify", "userId": "u-2", "traits": {"email": "x@example.com"}},
             track(context={"consent": {"categoryPreferences": {"analytics": False}}})]
    body = gzip.compress(orjson.dumps({"batch": batch, "sentAt": "2026-12-03T12:00:01Z"}))
    r = segment_client.post("/v1/batch", content=body, headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["success"] is True and doc["dark"] == 3 and doc["no_consent"] == 1
    by_index = {x["index"]: x["errors"] for x in doc["rejected"]}
    assert sorted(by_index) == [1, 2, 3, 4]
    assert "unknown event 'made_up_thing'" in by_index[1][0]
    assert "group calls are not supported" in by_index[2][0]
    assert "alias calls are not supported" in by_index[3][0]
    assert any("user_id" in e or "anonymous_id" in e for e in by_index[4])
    assert all(x["event_id"] for x in doc["rejected"])


def test_single_calls_and_bad_requests(segment_client):
    for path, message in (("/v1/track", track()), ("/v1/page", {"userId": "u", "properties": {"url": "https://e.com/"}}),
                          ("/v1/screen", {"userId": "u", "name": "Home"}),
                          ("/v1/identify", {"userId": "u", "traits": {"username": "ann"}})):
        r = segment_client.post(path, content=orjson.dumps(message), headers=basic(WRITE_KEY))
        assert r.status_code == 200 and r.json()["dark"] == 1, (path, r.text)
    r = segment_client.post("/v1/group", content=orjson.dumps({"userId": "u", "groupId": "g"}), headers=basic(WRITE_KEY))
    assert r.status_code == 200 and r.json()["rejected"][0]["index"] == 0
    for body, code in ((b"{", "malformed_json"), (b"[]", "invalid_body"), (b'{"batch": []}', "empty_batch"),
                       (b'{"batch": 3}', "invalid_body")):
        r = segment_client.post("/v1/batch", content=body, headers=basic(WRITE_KEY))
        assert (r.status_code, r.json()["code"], r.json()["success"]) == (400, code, False)
    r = segment_client.post("/v1/batch", content=orjson.dumps({"batch": [track()] * 501}), headers=basic(WRITE_KEY))
    assert (r.status_code, r.json()["code"]) == (413, "too_many_events")
    r = segment_client.post("/v1/nope", content=b"{}", headers=basic(WRITE_KEY))
    assert r.status_code == 404
    metrics = segment_client.get("/metrics").text
    assert 'analytics_ingest_requests_total{route="/v1/batch",status="400"}' in metrics
