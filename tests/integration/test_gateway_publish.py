"""The gateway against the real devstack: Kafka (Tansu), Redis and PostgreSQL."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections import Counter

import orjson
import psycopg
import pytest
from starlette.testclient import TestClient

from ingest_gateway.app import create_app
from ingest_gateway.options import GatewayOptions
from schemas.wire import decode_raw
from ingest_gateway.signing import sign_request
from tests.integration.gateway_support import (ADMIN_TOKEN, KID, MASTER_KEY, gateway_settings, make_event, metric,
                                               post_batch, read_topic, records_for)

pytestmark = pytest.mark.integration
RAW, REJECTED = "analytics.events.raw", "analytics.events.rejected"


@pytest.fixture
def gateway(stack_settings, tmp_path):
    """``gateway(**options)`` -> a started TestClient on the devstack; all are stopped after the test."""
    started = []

    def build(**overrides):
        settings = gateway_settings(stack_settings, tmp_path)
        options = GatewayOptions.from_settings(settings, gateway_id="gw-it", **overrides)
        client = TestClient(create_app(settings, options=options), client=("198.51.100.7", 50000))
        client.__enter__()
        started.append(client)
        return client

    yield build
    for client in started:
        client.__exit__(None, None, None)


def test_ready_against_the_devstack(gateway):
    client = gateway()
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"schemas": True, "kafka": True, "spool": True}


def test_accepted_events_land_on_the_raw_topic(gateway, stack_settings):
    client = gateway()
    events = [make_event(context={"locale": "en-US"}) for _ in range(5)]
    events[1]["user_id"] = events[0]["user_id"]  # same subject: same key, same partition
    r = post_batch(client, events, headers={"User-Agent": "it-agent/1.0"})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 5, "duplicates": 0, "no_consent": 0, "rejected": []}

    ids = {e["event_id"] for e in events}
    found = records_for(read_topic(stack_settings.kafka_brokers, RAW), ids)
    assert sorted(r.headers["hw-event-id"].decode() for r in found) == sorted(ids)
    by_id = {r.headers["hw-event-id"].decode(): r for r in found}
    for event in events:
        rec = by_id[event["event_id"]]
        assert rec.key == event["user_id"].encode()
        assert rec.headers["hw-event"] == b"page_viewed" and rec.headers["hw-schema-version"] == b"1"
        raw = decode_raw(rec.value)
        assert raw.event == event  # published exactly as validated
        assert raw.gateway_id == "gw-it" and raw.source == "native"
        assert raw.sent_at == "2026-12-03T12:00:01Z" and raw.client_ip == "198.51.100.7"
        assert raw.user_agent == "it-agent/1.0" and raw.received_at.endswith("Z")
    assert by_id[events[0]["event_id"]].partition == by_id[events[1]["event_id"]].partition
    text = client.get("/metrics").text
    assert metric(text, 'analytics_ingest_events_total{result="accepted"}') == 5
    assert metric(text, 'analytics_ingest_request_seconds_count{route="/analytics/collect"}') == 1


def test_events_are_published_as_the_client_wrote_them(gateway, stack_settings):
    client = gateway()
    events = [make_event(context={"locale": "sv-SE", "app": {"name": "Å \"x\" {", "version": "1"}}) for _ in range(3)]
    body = json.dumps({"sent_at": "2026-12-03T12:00:01Z", "batch": events}, indent=2, ensure_ascii=False).encode()
    signed = sign_request(body, "it-device", KID, MASTER_KEY)
    r = client.post("/analytics/collect", content=body, headers={"Content-Type": "application/json", **signed})
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    found = records_for(read_topic(stack_settings.kafka_brokers, RAW), {e["event_id"] for e in events})
    by_id = {r.headers["hw-event-id"].decode(): r for r in found}
    assert len(by_id) == 3
    for event in events:
        value = by_id[event["event_id"]].value
        assert decode_raw(value).event == event
        assert json.dumps(event, indent=2, ensure_ascii=False).replace("\n", "\n    ").encode() in value


def test_rejected_events_are_audited_without_their_payload(gateway, stack_settings):
    client = gateway()
    planted = f"PLANTED-{uuid.uuid4().hex}"
    # No "path". With a context, which the gateway does not decode for valid events: the audit hash still covers it.
    bad = make_event(properties={"url": "https://example.com/x", "title": planted}, context={"locale": "en-US"})
    good = make_event(context={"locale": "en-US"})
    r = post_batch(client, [good, bad])
    assert r.status_code == 200
    doc = r.json()
    assert doc["accepted"] == 1 and doc["rejected"][0]["index"] == 1
    assert doc["rejected"][0]["event_id"] == bad["event_id"]
    assert any(e.startswith("properties.path:") for e in doc["rejected"][0]["errors"])

    # The audit table: reasons, name, receive time and a keyed hash, never the payload.
    gw = client.app.state.gateway
    with psycopg.connect(stack_settings.postgres_url.reveal()) as conn:
        rows = conn.execute("SELECT t::text, event_name, reasons, payload_hash, gateway_id, received_at"
                            " FROM analytics_rejected_events t WHERE event_id = %s", (bad["event_id"],)).fetchall()
    assert len(rows) == 1
    row_text, name, reasons, digest, gateway_id, received_at = rows[0]
    assert planted not in row_text and "example.com" not in row_text
    assert name == "page_viewed" and gateway_id == "gw-it" and received_at is not None
    assert any(reason.startswith("properties.path:") for reason in reasons)
    expected = hmac.new(gw.audit_key, orjson.dumps(bad, option=orjson.OPT_SORT_KEYS), hashlib.sha256).hexdigest()
    assert digest == expected

    # The rejected topic: the same record, again without the payload; the good event is not there.
    records = read_topic(stack_settings.kafka_brokers, REJECTED)
    mine = records_for(records, {bad["event_id"], good["event_id"]})
    assert len(mine) == 1
    assert planted.encode() not in mine[0].value
    record = orjson.loads(mine[0].value)
    assert record["type"] == "AnalyticsEventRejected" and record["payload_hash"] == expected
    assert record["event_id"] == bad["event_id"] and record["event"] == "page_viewed"
    raw = records_for(read_topic(stack_settings.kafka_brokers, RAW), {bad["event_id"], good["event_id"]})
    assert [r.headers["hw-event-id"].decode() for r in raw] == [good["event_id"]]
    text = client.get("/metrics").text
    assert metric(text, 'analytics_schema_failures_total{event="page_viewed"}') == 1
    assert metric(text, 'analytics_ingest_events_total{result="rejected"}') == 1


def test_idempotency_key_retry_returns_first_answer_and_publishes_nothing(gateway, stack_settings):
    client = gateway()
    events = [make_event() for _ in range(3)] + [make_event(properties={})]
    key = f"idem-{uuid.uuid4()}"
    now = int(time.time())
    first = post_batch(client, events, headers={"Idempotency-Key": key}, timestamp=now)
    assert first.status_code == 200 and first.json()["accepted"] == 3
    # A retry, signed anew, and a byte-identical replay of the first request (same signature).
    again = post_batch(client, events, headers={"Idempotency-Key": key}, timestamp=now + 1)
    replay = post_batch(client, events, headers={"Idempotency-Key": key}, timestamp=now)
    for retry in (again, replay):
        assert retry.status_code == 200 and retry.content == first.content
        assert retry.headers["Idempotent-Replayed"] == "true"
    other = post_batch(client, [make_event()], headers={"Idempotency-Key": key})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    # The same signature without an Idempotency-Key is a replay.
    bare = post_batch(client, events, timestamp=now)
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "signature_replayed"

    ids = {e["event_id"] for e in events}
    counts = Counter(r.headers["hw-event-id"].decode()
                     for r in records_for(read_topic(stack_settings.kafka_brokers, RAW), ids))
    assert counts == Counter({e["event_id"]: 1 for e in events[:3]})
    rejected = records_for(read_topic(stack_settings.kafka_brokers, REJECTED), ids)
    assert len(rejected) == 1


def test_event_id_dedup_across_requests_and_workers(gateway, stack_settings):
    client, second_worker = gateway(), gateway()  # two apps share Redis, as two workers would
    repeated, fresh = make_event(), make_event()
    assert post_batch(client, [repeated]).json()["accepted"] == 1
    r = post_batch(second_worker, [repeated, fresh, fresh])
    assert r.json() == {"accepted": 1, "duplicates": 2, "no_consent": 0, "rejected": []}
    counts = Counter(r.headers["hw-event-id"].decode() for r in records_for(
        read_topic(stack_settings.kafka_brokers, RAW), {repeated["event_id"], fresh["event_id"]}))
    assert counts == {repeated["event_id"]: 1, fresh["event_id"]: 1}
    assert metric(second_worker.get("/metrics").text, 'analytics_ingest_events_total{result="duplicate"}') == 2


def test_opted_out_subject_is_dropped_and_counted(gateway, stack_settings):
    client = gateway()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    subject = f"optout-{uuid.uuid4().hex}"
    assert client.post(f"/analytics/optout/{subject}").status_code == 401
    assert client.post(f"/analytics/optout/{subject}", headers=auth).status_code == 201
    with psycopg.connect(stack_settings.postgres_url.reveal()) as conn:
        assert conn.execute("SELECT count(*) FROM analytics_optout WHERE subject_id = %s",
                            (subject,)).fetchone()[0] == 1
    # Another worker learns of it from PostgreSQL at its next reload.
    other = gateway(optout_refresh_seconds=0.2)
    blocked_user, blocked_anon, allowed = (make_event(user_id=subject), make_event(anonymous_id=subject),
                                           make_event())
    del blocked_anon["user_id"]
    r = post_batch(client, [blocked_user, blocked_anon, allowed])
    assert r.json() == {"accepted": 1, "duplicates": 0, "no_consent": 2, "rejected": []}
    time.sleep(0.5)
    r2 = post_batch(other, [make_event(user_id=subject)])
    assert r2.json()["no_consent"] == 1
    consent_false = post_batch(client, [make_event()], consent={"analytics": False})
    assert consent_false.json()["no_consent"] == 1
    ids = {blocked_user["event_id"], blocked_anon["event_id"], allowed["event_id"]}
    found = records_for(read_topic(stack_settings.kafka_brokers, RAW), ids)
    assert [r.headers["hw-event-id"].decode() for r in found] == [allowed["event_id"]]
    assert metric(client.get("/metrics").text, 'analytics_ingest_events_total{result="no_consent"}') == 3
    assert client.get(f"/analytics/optout/{subject}", headers=auth).json()["opted_out"] is True
    assert client.delete(f"/analytics/optout/{subject}", headers=auth).status_code == 204
    assert post_batch(client, [make_event(user_id=subject)]).json()["accepted"] == 1


def test_dark_mode_validates_counts_audits_and_publishes_nothing(gateway, stack_settings):
    client = gateway(dark_mode=True)
    assert client.get("/analytics/config").json()["mode"] == "dark"
    good = [make_event() for _ in range(3)]
    bad = make_event(properties={"url": "https://example.com/"})
    r = post_batch(client, good + [bad])
    assert r.status_code == 200
    doc = r.json()
    assert doc["accepted"] == 0 and doc["dark"] == 3 and [x["index"] for x in doc["rejected"]] == [3]
    ids = {e["event_id"] for e in good + [bad]}
    assert records_for(read_topic(stack_settings.kafka_brokers, RAW), ids) == []
    assert records_for(read_topic(stack_settings.kafka_brokers, REJECTED), ids) == []
    with psycopg.connect(stack_settings.postgres_url.reveal()) as conn:
        assert conn.execute("SELECT count(*) FROM analytics_rejected_events WHERE event_id = %s",
                            (bad["event_id"],)).fetchone()[0] == 1
    text = client.get("/metrics").text
    assert metric(text, 'analytics_ingest_events_total{result="dark"}') == 3
    assert metric(text, 'analytics_ingest_events_total{result="accepted"}') == 0
    # Going live later: the dark run claimed no event ids, so the same events are accepted then.
    live = gateway()
    assert post_batch(live, good).json()["accepted"] == 3
