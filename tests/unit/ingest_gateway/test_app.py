"""The HTTP surface without services: limits, signatures, consent, opt-out API, spooling when Kafka is away."""
from __future__ import annotations

import gzip
import zlib

import orjson

from ingest_gateway.signing import sign_request
from ingest_gateway.spool import Spool
from ingest_gateway.producer import decode_batch
from schemas.wire import decode_raw
from tests.unit.ingest_gateway.conftest import ADMIN_TOKEN, KID, MASTER_KEY, make_event


def post(client, body: bytes, *, device="dev-1", extra=None, sign=True):
    headers = {"Content-Type": "application/json", **(extra or {})}
    if sign:
        headers.update(sign_request(body, device, KID, MASTER_KEY))
    return client.post("/analytics/collect", content=body, headers=headers)


def error_code(response) -> str:
    return response.json()["error"]["code"]


def test_unsigned_and_badly_signed_requests_are_401(offline_client):
    client = offline_client()
    body = orjson.dumps({"batch": [make_event()]})
    r = post(client, body, sign=False)
    assert r.status_code == 401 and error_code(r) == "signature_missing"
    headers = sign_request(body, "dev-1", KID, MASTER_KEY)
    r = client.post("/analytics/collect", content=body + b" ", headers=headers)
    assert r.status_code == 401 and error_code(r) == "signature_mismatch"
    r = client.post("/analytics/collect", content=body, headers=sign_request(body, "dev-1", "nope", MASTER_KEY))
    assert r.status_code == 401 and error_code(r) == "unknown_kid"
    assert r.headers["X-Request-ID"] and r.json()["request_id"] == r.headers["X-Request-ID"]


def test_body_limits_over_http(offline_client):
    client = offline_client()
    r = post(client, b"x" * 70_000)
    assert (r.status_code, error_code(r)) == (413, "body_too_large")
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = comp.compress(b"\0" * (32 << 20)) + comp.flush()
    r = post(client, bomb, extra={"Content-Encoding": "gzip"})
    assert (r.status_code, error_code(r)) == (413, "decompressed_too_large")
    r = post(client, orjson.dumps({"batch": [make_event() for _ in range(51)]}))
    assert (r.status_code, error_code(r)) == (413, "too_many_events")
    r = post(client, b'{"batch": []}')
    assert (r.status_code, error_code(r)) == (400, "empty_batch")
    r = post(client, b'{"batch": [}')
    assert (r.status_code, error_code(r)) == (400, "malformed_json")
    r = post(client, b'{"batch": ["\xc3\x28"]}')
    assert (r.status_code, error_code(r)) == (400, "invalid_utf8")
    r = post(client, gzip.compress(b'{"batch": [1]}'), extra={"Content-Encoding": "br"})
    assert (r.status_code, error_code(r)) == (415, "unsupported_encoding")
    r = post(client, b'{"batch": [1]}', extra={"Content-Encoding": "gzip"})
    assert (r.status_code, error_code(r)) == (400, "compression_invalid")


def test_unsigned_gzip_bomb_is_never_inflated(offline_client):
    client = offline_client()
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = comp.compress(b"\0" * (32 << 20)) + comp.flush()
    r = post(client, bomb, extra={"Content-Encoding": "gzip"}, sign=False)
    assert (r.status_code, error_code(r)) == (401, "signature_missing")


def test_per_event_problems_do_not_fail_the_request(offline_client):
    client = offline_client()
    big = make_event(properties={"url": "https://example.com/", "path": "/", "title": "t" * 5000})
    bad = make_event(properties={"url": "https://example.com/"})  # path missing
    other_device = make_event(device_id="dev-2")
    body = orjson.dumps({"batch": [big, bad, "not an object", other_device, make_event(consent={"analytics": False})]})
    r = post(client, body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["accepted"] == 0 and doc["no_consent"] == 1
    by_index = {item["index"]: item for item in doc["rejected"]}
    assert set(by_index) == {0, 1, 2, 3}
    assert "over the limit" in by_index[0]["errors"][0]
    assert by_index[1]["event_id"] == bad["event_id"]
    assert any(e.startswith("properties.path:") for e in by_index[1]["errors"])
    assert by_index[2]["event_id"] is None
    assert by_index[3]["errors"] == ["device_id: does not match the signing device (X-Headwater-Device)"]


def test_batch_level_consent_drops_everything(offline_client):
    client = offline_client()
    body = orjson.dumps({"consent": {"analytics": False}, "batch": [make_event(), make_event(properties={})]})
    r = post(client, body)
    assert r.status_code == 200
    assert r.json() == {"accepted": 0, "duplicates": 0, "no_consent": 2, "rejected": []}


def test_optout_api_with_sqlite(offline_client):
    client = offline_client()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert client.post("/analytics/optout/u-9").status_code == 401
    assert client.post("/analytics/optout/u-9", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/analytics/optout/u-9", headers=auth).status_code == 404
    r = client.post("/analytics/optout/u-9", headers=auth)
    assert r.status_code == 201 and r.json()["opted_out"] is True
    assert client.post("/analytics/optout/u-9", headers=auth).status_code == 200
    assert client.get("/analytics/optout/u-9", headers=auth).json()["subject_id"] == "u-9"
    r = post(client, orjson.dumps({"batch": [make_event(user_id="u-9"), make_event(user_id="u-9", properties={})]}))
    assert r.json()["no_consent"] == 2
    assert client.delete("/analytics/optout/u-9", headers=auth).status_code == 204
    assert client.delete("/analytics/optout/u-9", headers=auth).status_code == 404


def test_kafka_unreachable_means_spooled_and_still_2xx(offline_client, tmp_path):
    client = offline_client(spool_dir=tmp_path / "spool")
    events = [make_event() for _ in range(3)]
    r = post(client, orjson.dumps({"sent_at": "2026-12-03T12:00:01Z", "batch": events}))
    assert r.status_code == 200 and r.json()["accepted"] == 3
    # The second batch skips Kafka entirely while the spool holds a backlog.
    r = post(client, orjson.dumps({"batch": [make_event()]}))
    assert r.status_code == 200
    metrics = client.get("/metrics").text
    assert 'analytics_ingest_events_total{result="accepted"} 4.0' in metrics
    spool_line = next(l for l in metrics.splitlines() if l.startswith("analytics_gateway_spool_bytes"))
    assert float(spool_line.split()[1]) > 0
    assert client.get("/readyz").status_code == 503
    client.__exit__(None, None, None)  # stop the app: the spool must be readable by a new owner
    spool = Spool(tmp_path / "spool" / "slot-0", max_bytes=1 << 30)
    position, payload = spool.peek()
    records = [decode_raw(m.value) for m in decode_batch(payload)]
    assert [r.event_id for r in records] == [e["event_id"] for e in events]
    assert records[0].sent_at == "2026-12-03T12:00:01Z"
    assert len(spool) == 2
    spool.close()


def test_full_spool_answers_503_with_retry_after(offline_client):
    client = offline_client(spool_max_bytes=100)
    r = post(client, orjson.dumps({"batch": [make_event()]}))
    assert r.status_code == 503 and error_code(r) == "unavailable" and r.headers["Retry-After"] == "1"


def test_backpressure_429(offline_client):
    client = offline_client(max_inflight_requests=0)
    r = post(client, orjson.dumps({"batch": [make_event()]}))
    assert r.status_code == 429 and r.headers["Retry-After"] == "1" and error_code(r) == "overloaded"


def test_config_health_and_openapi(offline_client):
    client = offline_client(dark_mode=True)
    assert client.get("/healthz").json() == {"status": "ok"}
    config = client.get("/analytics/config").json()
    assert config["mode"] == "dark" and config["max_batch_events"] == 50 and config["max_event_bytes"] == 4096
    assert config["schemas"]["page_viewed"] >= 1 and config["signature"]["required"] is True
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/analytics/collect", "/analytics/config", "/analytics/optout/{subject_id}", "/healthz",
                 "/readyz", "/metrics", "/openapi.json"):
        assert path in doc["paths"]
    assert doc["components"]["schemas"]["CollectRequest"]["properties"]["batch"]["maxItems"] == 50
