"""The gateway's batch encoder writes exactly the records that :class:`schemas.wire.RawRecord` describes."""
from __future__ import annotations

import uuid

import orjson
import pytest

from ingest_gateway.ingest import raw_messages
from schemas.wire import RawRecord, decode_raw

VERSIONS = {"page_viewed": 3, "identify": 1, "screen_viewed": 12}


def _events() -> list[dict]:
    base = {"event": "page_viewed", "timestamp": "2026-12-03T12:00:00Z", "properties": {"url": "https://e.x/", "path": "/"}}
    return [
        {**base, "event_id": str(uuid.uuid4()), "user_id": "u-1", "anonymous_id": "a-1", "device_id": "d-1"},
        {**base, "event_id": str(uuid.uuid4()), "anonymous_id": "a-2", "device_id": "d-2",
         "context": {"locale": "de-DE", "app": {"name": "Ünïcode ✓", "version": "1.0"}}},
        {**base, "event": "identify", "event_id": str(uuid.uuid4()), "device_id": "d-3",
         "properties": {"email": "a@b.example", "n": 1.5, "big": 2**53, "none": None, "list": [1, "x", {}]}},
        {**base, "event": "screen_viewed", "event_id": str(uuid.uuid4()), "user_id": "", "anonymous_id": "a-4"},
        {**base, "event_id": str(uuid.uuid4())},  # no subject at all: keyed by its event id
    ]


@pytest.mark.parametrize("common", [
    dict(received_at="2026-12-03T12:00:00.123456Z", gateway_id="gw-1", source="native",
         sent_at="2026-12-03T11:59:59Z", client_ip="203.0.113.7", user_agent="agent/1.0 (\"quoted\")"),
    dict(received_at="2026-12-03T12:00:00.000001Z", gateway_id="gw-2", source="segment"),
])
@pytest.mark.parametrize("with_texts", [False, True])
def test_same_key_value_and_headers_as_raw_record(common, with_texts):
    events = _events()
    texts = [orjson.dumps(e) for e in events] if with_texts else None
    messages = raw_messages("raw", events, VERSIONS.__getitem__, RawRecord(event={}, **common), texts)
    assert len(messages) == len(events)
    for event, message in zip(events, messages):
        record = RawRecord(event=event, schema_version=VERSIONS[event["event"]], **common)
        assert message.topic == "raw"
        assert message.key == record.key
        assert message.value == record.encode()
        assert list(message.headers.items()) == record.headers()  # same names, values and order
        assert decode_raw(message.value) == record


def test_events_are_not_modified():
    events = _events()
    before = [dict(e) for e in events]
    raw_messages("raw", events, VERSIONS.__getitem__, RawRecord(event={}, received_at="t", gateway_id="g"))
    assert events == before


def test_messages_in_flight_add_one_tracked_object_each():
    """Messages wait for Kafka's acknowledgement; the garbage collector walks every tracked container among them at
    each collection, so a message must cost it one object (the tuple), not five (a list of header pairs too)."""
    import gc

    messages = raw_messages("raw", _events(), VERSIONS.__getitem__,
                            RawRecord(event={}, received_at="2026-12-03T12:00:00Z", gateway_id="gw"))
    for message in messages:
        assert not gc.is_tracked(message.headers)
        assert not gc.is_tracked(message.key) and not gc.is_tracked(message.value)
