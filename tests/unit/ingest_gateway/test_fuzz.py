"""Generated requests against every endpoint of the in-process app: whatever arrives, never a 5xx or a crash.

About 2 200 requests by default (``HEADWATER_FUZZ_EXAMPLES``, examples per test, scales it: each example of the
two ingest tests sends its body to both ingest APIs).

Bodies range from valid events with one field mutated to arbitrary JSON and arbitrary bytes; encodings
from none to corrupt gzip; signatures from valid to tampered; Segment credentials from valid to garbage.
Kafka is unreachable, so accepted batches go through the spool (on tmpfs when there is one, for speed).
"""
from __future__ import annotations

import base64
import gzip
import json
import os
import tempfile
import uuid
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.testclient import TestClient

from headwater.settings import load_settings
from ingest_gateway.app import create_app
from ingest_gateway.options import GatewayOptions
from ingest_gateway.signing import sign_request
from tests.unit.ingest_gateway.conftest import ADMIN_TOKEN, KID, MASTER_KEY, closed_port, make_event

WRITE_KEY = "fuzz-write-key"
SEGMENT_CALLS = ["batch", "track", "identify", "page", "screen", "group", "alias"]
FUZZ_SETTINGS = settings(max_examples=int(os.environ.get("HEADWATER_FUZZ_EXAMPLES", "500")), deadline=None,
                         database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def client():
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        app_settings = load_settings({
            "HEADWATER_KAFKA_BROKERS": f"127.0.0.1:{closed_port()}", "HEADWATER_DATA_DIR": tmp,
            "HEADWATER_HMAC_KEYS": f"{KID}:{base64.b64encode(MASTER_KEY).decode()}",
            "HEADWATER_ADMIN_TOKEN": ADMIN_TOKEN, "HEADWATER_WRITE_KEYS": WRITE_KEY,
            "HEADWATER_MAX_BODY_BYTES": "65536", "HEADWATER_MAX_DECOMPRESSED_BYTES": "262144",
            "HEADWATER_MAX_EVENT_BYTES": "4096"})
        options = GatewayOptions.from_settings(app_settings, delivery_timeout_ms=200, max_inflight_requests=10_000)
        with TestClient(create_app(app_settings, options=options), raise_server_exceptions=True) as c:
            yield c


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                      st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=8)
field_names = st.sampled_from(["event", "event_id", "timestamp", "user_id", "anonymous_id", "device_id",
                               "properties", "context", "consent", "sent_at", "messageId", "userId", "anonymousId",
                               "type", "traits", "name", "writeKey", "batch", "sentAt"])


@st.composite
def native_event(draw):
    event = make_event(event=draw(st.sampled_from(["page_viewed", "screen_viewed", "identify", "nope", "Bad Name"])),
                       event_id=str(draw(st.uuids())))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "delete", "context"]))
        name = draw(field_names)
        if action == "set":
            event[name] = draw(json_value)
        elif action == "delete":
            event.pop(name, None)
        else:
            event["context"] = draw(st.dictionaries(st.sampled_from(["app", "locale", "device", "ip", "library",
                                                                     "campaign", "experiments", "junk"]), json_value))
    return event


@st.composite
def segment_message(draw):
    message = {"type": draw(st.sampled_from(SEGMENT_CALLS[1:] + ["bogus"])), "messageId": draw(st.one_of(
        st.none(), st.text(max_size=40), st.uuids().map(str))),
        "userId": draw(st.one_of(st.none(), st.text(max_size=20), st.integers())),
        "event": draw(st.sampled_from(["Page Viewed", "Community Join", "identify", "", "x" * 70])),
        "properties": draw(st.one_of(json_value, st.just({"url": "https://e.com/a", "path": "/a"}))),
        "context": draw(st.one_of(json_value, st.fixed_dictionaries({
            "ip": st.text(max_size=20), "device": json_value, "os": json_value, "app": json_value,
            "consent": json_value, "library": json_value, "locale": st.text(max_size=10)})))}
    for _ in range(draw(st.integers(0, 2))):
        message[draw(field_names)] = draw(json_value)
    return message


def _dumps(doc) -> bytes:
    """Standard JSON, big integers included (orjson refuses to write those; clients may well send them)."""
    return json.dumps(doc).encode()


@st.composite
def body_bytes(draw, item):
    kind = draw(st.sampled_from(["batch", "batch", "json", "bytes", "empty"]))
    if kind == "batch":
        doc = {"batch": draw(st.lists(item, min_size=0, max_size=5))}
        if draw(st.booleans()):
            doc["sent_at" if draw(st.booleans()) else "sentAt"] = draw(st.one_of(st.text(max_size=30),
                                                                           st.just("2026-12-03T12:00:01Z")))
        if draw(st.booleans()):
            doc[draw(st.sampled_from(["consent", "context", "writeKey"]))] = draw(json_value)
        return _dumps(doc)
    if kind == "json":
        return _dumps(draw(st.one_of(json_value, item)))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    return b""


@st.composite
def encoded(draw, raw: bytes):
    how = draw(st.sampled_from(["identity", "identity", "gzip", "deflate", "corrupt-gzip", "br", "none-label"]))
    if how == "gzip":
        return gzip.compress(raw, mtime=0), {"Content-Encoding": draw(st.sampled_from(["gzip", "GZIP", "x-gzip"]))}
    if how == "deflate":
        return zlib.compress(raw), {"Content-Encoding": "deflate"}
    if how == "corrupt-gzip":
        data = bytearray(gzip.compress(raw, mtime=0))
        if data:
            data[draw(st.integers(0, len(data) - 1))] ^= 0xFF
        return bytes(data[:draw(st.integers(0, len(data)))]), {"Content-Encoding": "gzip"}
    if how == "br":
        return raw, {"Content-Encoding": "br"}
    return raw, {} if how == "none-label" else {"Content-Encoding": "identity"}


header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@st.composite
def signed_headers(draw, body: bytes):
    how = draw(st.sampled_from(["valid", "valid", "tampered", "other-device", "random", "none", "stale"]))
    device = draw(st.sampled_from(["dev-1", "dev-2", "x" * 129]))
    if how == "none":
        return {}
    if how == "random":
        return {k: draw(header_text) for k in draw(st.sets(st.sampled_from(
            ["X-Headwater-Device", "X-Headwater-Timestamp", "X-Headwater-Signature", "Idempotency-Key"])))}
    ts = None if how != "stale" else 1_000_000
    headers = sign_request(body, device, KID, MASTER_KEY, timestamp=ts)
    if how == "tampered":
        headers["X-Headwater-Signature"] = headers["X-Headwater-Signature"][:-2] + "00"
    if how == "other-device":
        headers["X-Headwater-Device"] = "dev-3"
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(st.one_of(header_text, st.just("same-key")))
    return headers


@st.composite
def segment_auth(draw):
    how = draw(st.sampled_from(["valid", "valid", "wrong", "garbage", "bearer", "none"]))
    if how == "valid":
        return {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    if how == "wrong":
        return {"Authorization": "Basic " + base64.b64encode(draw(st.binary(max_size=30))).decode()}
    if how == "garbage":
        return {"Authorization": "Basic " + draw(header_text)}
    if how == "bearer":
        return {"Authorization": "Bearer " + draw(header_text)}
    return {}


def _check(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.headers.get("content-type", "").startswith("application/json") and response.content:
        orjson.loads(response.content)


def test_fuzz_native_collect(client):
    @FUZZ_SETTINGS
    @given(data=st.data())
    def run(data):
        raw = data.draw(body_bytes(native_event()))
        body, headers = data.draw(encoded(raw))
        headers.update(data.draw(signed_headers(body)))
        if data.draw(st.booleans()):
            headers["Content-Type"] = data.draw(st.sampled_from(["application/json", "text/plain", "x/y; q=1"]))
        _check(client.post("/analytics/collect", content=body, headers=headers))
        # The same bytes at the Segment API: a second request for the price of one generated body.
        segment_headers = {k: v for k, v in headers.items() if k == "Content-Encoding"}
        segment_headers.update(data.draw(segment_auth()))
        _check(client.post("/v1/batch", content=body, headers=segment_headers))

    run()
    # The generated traffic reached the whole path, not only the request-level refusals.
    text = client.get("/metrics").text
    for result in ("accepted", "rejected"):
        assert f'analytics_ingest_events_total{{result="{result}"}} 0.0' not in text
        assert f'analytics_ingest_events_total{{result="{result}"}}' in text


def test_fuzz_segment_api(client):
    @FUZZ_SETTINGS
    @given(data=st.data())
    def run(data):
        call = data.draw(st.sampled_from(SEGMENT_CALLS + ["nope"]))
        item = segment_message()
        raw = data.draw(body_bytes(item)) if call == "batch" else _dumps(data.draw(st.one_of(item, json_value)))
        body, headers = data.draw(encoded(raw))
        headers.update(data.draw(segment_auth()))
        _check(client.post(f"/v1/{call}", content=body, headers=headers))
        native_headers = {k: v for k, v in headers.items() if k == "Content-Encoding"}
        native_headers.update(data.draw(signed_headers(body)))
        _check(client.post("/analytics/collect", content=body, headers=native_headers))

    run()


def test_fuzz_everything_else(client):
    paths = ["/analytics/config", "/analytics/optout/{s}", "/healthz", "/metrics", "/openapi.json",
             "/analytics/collect", "/v1/batch", "/nowhere"]

    @settings(FUZZ_SETTINGS, max_examples=max(FUZZ_SETTINGS.max_examples // 3, 50))
    @given(path=st.sampled_from(paths), method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
           subject=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%"),
                           min_size=1, max_size=300),
           query=st.dictionaries(st.sampled_from(["device_id", "x"]), st.text(max_size=150), max_size=2),
           auth=st.one_of(st.just(f"Bearer {ADMIN_TOKEN}"), header_text), body=st.binary(max_size=100))
    def run(path, method, subject, query, auth, body):
        url = path.replace("{s}", subject)
        response = client.request(method, url, params=query, content=body if method != "GET" else None,
                                  headers={"Authorization": auth})
        _check(response)

    run()
