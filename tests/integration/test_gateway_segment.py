"""The Segment-compatible API driven by the official Segment and RudderStack Python SDKs against
``headwater gateway`` (uvicorn) on the devstack: the events must land on ``analytics.events.raw``."""
from __future__ import annotations

import os
import uuid

import pytest

from schemas.wire import decode_raw
from tests.integration.gateway_support import gateway_process, read_topic, records_for

pytestmark = pytest.mark.integration
WRITE_KEY = "it-segment-write-key"
RAW, REJECTED = "analytics.events.raw", "analytics.events.rejected"


@pytest.fixture(scope="module")
def gateway_url(devstack, tmp_path_factory):
    env = {**os.environ, **devstack.env(), "HEADWATER_DATA_DIR": str(tmp_path_factory.mktemp("segment-gw")),
           "HEADWATER_WRITE_KEYS": f"unused-key,{WRITE_KEY}", "HEADWATER_GATEWAY_ID": "gw-segment-it"}
    with gateway_process(env) as base:
        yield base


def _send_all(client, user: str, tag: str) -> dict[str, str]:
    """Each kind of call once; returns messageId -> the event name it should become."""
    ids = {f"{tag}-{n}": n for n in ("community_join", "page_viewed", "screen_viewed", "identify")}
    ids[str(uuid.uuid4())] = "subscription_cancelled"  # a UUID messageId is kept as the event id
    ctx = {"os": {"name": "Android", "version": "14"}, "device": {"id": f"dev-{tag}", "type": "android"},
           "network": {"wifi": True}, "traits": {"email": "never@example.com"}}
    it = iter(ids)
    client.track(user_id=user, event="Community Join", properties={"communityId": "c-1", "joinSource": "search"},
                 context=ctx, message_id=next(it))
    client.page(user_id=user, name="Pricing", properties={"url": "https://example.com/pricing", "title": "Pricing"},
                message_id=next(it))
    client.screen(user_id=user, name="Settings", message_id=next(it))
    client.identify(user_id=user, traits={"email": "ann@example.com", "firstName": "Ann"}, message_id=next(it))
    client.track(user_id=user, event="subscriptionCancelled",
                 properties={"subscriptionId": "s-1", "planId": "pro", "reason": "unused", "cancelAtPeriodEnd": True},
                 message_id=next(it))
    # Rejected per event, never failing the request: an unknown event and an unsupported call.
    client.track(user_id=user, event="Not In The Catalogue", message_id=f"{tag}-unknown")
    client.group(user_id=user, group_id="g-1", message_id=f"{tag}-group")
    client.flush()
    return ids


def _check_landed(brokers: str, ids: dict[str, str], user: str, tag: str, library: str) -> None:
    from ingest_gateway.segment_map import event_id_for

    expected = {event_id_for({"messageId": m}): name for m, name in ids.items()}
    found = records_for(read_topic(brokers, RAW), set(expected))
    assert sorted(r.headers["hw-event-id"].decode() for r in found) == sorted(expected)
    for record in found:
        raw = decode_raw(record.value)
        assert raw.source == "segment" and raw.gateway_id == "gw-segment-it"
        assert raw.event["event"] == expected[raw.event["event_id"]] and raw.event["user_id"] == user
        assert raw.event["context"]["library"]["name"] == library
        assert raw.sent_at is not None and raw.client_ip == "127.0.0.1"
        assert "traits" not in raw.event["context"] and "network" not in raw.event["context"]
    by_name = {decode_raw(r.value).event["event"]: decode_raw(r.value).event for r in found}
    assert by_name["page_viewed"]["properties"]["path"] == "/pricing"
    assert by_name["identify"]["properties"] == {"email": "ann@example.com", "first_name": "Ann"}
    assert by_name["community_join"]["device_id"].startswith("dev-")
    assert by_name["community_join"]["context"]["device"] == {"os": "Android", "os_version": "14"}
    rejected = [orjson_loads(r.value) for r in read_topic(brokers, REJECTED)
                if orjson_loads(r.value).get("source") == "segment"]
    rejected_ids = {r["event_id"] for r in rejected}
    for suffix in ("unknown", "group"):
        assert event_id_for({"messageId": f"{tag}-{suffix}"}) in rejected_ids


def orjson_loads(value: bytes) -> dict:
    import orjson

    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def test_official_segment_sdk(gateway_url, stack_settings):
    from segment.analytics import Client

    errors = []
    client = Client(WRITE_KEY, host=gateway_url, sync_mode=True, gzip=True, max_retries=1,
                    on_error=lambda exc, batch: errors.append(exc))
    user, tag = f"seg-{uuid.uuid4().hex[:10]}", f"seg{uuid.uuid4().hex[:10]}"
    ids = _send_all(client, user, tag)
    assert errors == []
    _check_landed(stack_settings.kafka_brokers, ids, user, tag, "analytics-python")


def test_segment_sdk_in_batching_mode_with_a_wrong_key_gets_401(gateway_url):
    from segment.analytics import Client

    errors = []
    client = Client("wrong-key", host=gateway_url, max_retries=0, on_error=lambda exc, batch: errors.append(exc))
    client.track(user_id="u", event="Community Join", properties={"communityId": "c", "joinSource": "search"})
    client.flush()
    client.shutdown()
    assert len(errors) == 1 and getattr(errors[0], "status", None) == 401 and errors[0].code == "unauthorized"


def test_rudderstack_sdk(gateway_url, stack_settings):
    rudder = pytest.importorskip("rudderstack.analytics")

    errors = []
    client = rudder.Client(WRITE_KEY, host=gateway_url, sync_mode=True, gzip=True, max_retries=1,
                           on_error=lambda exc, batch: errors.append(exc))
    user, tag = f"rud-{uuid.uuid4().hex[:10]}", f"rud{uuid.uuid4().hex[:10]}"
    ids = _send_all(client, user, tag)
    assert errors == []
    _check_landed(stack_settings.kafka_brokers, ids, user, tag, "analytics-python")
