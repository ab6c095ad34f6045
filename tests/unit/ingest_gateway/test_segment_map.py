"""Segment messages → our envelope, without HTTP."""
from __future__ import annotations

import uuid

import pytest

from ingest_gateway.segment_map import Unmappable, event_id_for, map_message, snake_case
from schemas.registry import SchemaRegistry

NOW = "2026-12-03T12:00:00.000000Z"


@pytest.fixture(scope="module")
def registry():
    return SchemaRegistry.load()


@pytest.mark.parametrize("given, expected", [
    ("Order Completed", "order_completed"), ("subscriptionStarted", "subscription_started"),
    ("payment-failed", "payment_failed"), ("HTMLPage Loaded", "html_page_loaded"), ("  Message Sent ", "message_sent"),
])
def test_event_names_become_snake_case(given, expected):
    assert snake_case(given) == expected


def test_message_ids_become_stable_uuids():
    given = str(uuid.uuid4())
    assert event_id_for({"messageId": given}) == given
    derived = event_id_for({"messageId": "ajs-next-123"})
    assert uuid.UUID(derived).version == 5 and derived == event_id_for({"messageId": "ajs-next-123"})
    assert derived != event_id_for({"messageId": "ajs-next-124"})
    # No messageId: derived from the content, so a retry of the same message keeps its id.
    assert event_id_for({"type": "track", "event": "x"}) == event_id_for({"event": "x", "type": "track"})


def test_track_maps_onto_a_valid_event(registry):
    message = {"type": "track", "event": "Subscription Cancelled", "messageId": "m-1", "userId": "u-1",
               "anonymousId": None, "timestamp": "2026-12-03T11:59:00.000+00:00",
               "properties": {"planId": "pro", "reason": "too_expensive"},
               "context": {"library": {"name": "analytics-python", "version": "2.4.0"}, "traits": {"email": "a@b.c"},
                           "os": {"name": "iOS", "version": "17.4"}, "device": {"id": "dev-9", "type": "ios"},
                           "ip": "not an ip", "userAgent": "ua/1", "locale": "en-US", "network": {"wifi": True},
                           "campaign": {"name": "spring", "source": "newsletter", "medium": "email"}}}
    event = map_message(message, None, received_at=NOW)
    assert event["event"] == "subscription_cancelled" and event["user_id"] == "u-1"
    assert "anonymous_id" not in event  # null ids are left out, never sent as null
    assert event["device_id"] == "dev-9" and event["timestamp"] == message["timestamp"]
    assert event["properties"] == {"plan_id": "pro", "reason": "too_expensive"}
    assert event["context"] == {"library": {"name": "analytics-python", "version": "2.4.0"},
                                "device": {"os": "iOS", "os_version": "17.4"}, "user_agent": "ua/1",
                                "locale": "en-US",
                                "campaign": {"utm_campaign": "spring", "utm_source": "newsletter", "utm_medium": "email"}}
    issues = registry.validate(event)
    assert all(not i.path.startswith("context") and i.path != "" for i in issues), issues


def test_page_screen_identify(registry):
    page = map_message({"messageId": "p", "anonymousId": "a-1", "name": "Pricing",
                        "properties": {"url": "https://example.com/pricing?x=1", "title": "Pricing", "name": "Pricing",
                                       "category": "marketing", "search": "?x=1"}}, "page", received_at=NOW)
    assert page["event"] == "page_viewed" and page["timestamp"] == NOW
    assert page["properties"] == {"url": "https://example.com/pricing?x=1", "title": "Pricing", "search": "?x=1",
                                  "page_category": "marketing", "path": "/pricing"}
    assert registry.validate(page) == []
    screen = map_message({"messageId": "s", "userId": 42, "name": "Settings", "properties": {"isFirstView": True}},
                         "screen", received_at=NOW)
    assert screen["user_id"] == "42" and screen["properties"] == {"screen_name": "Settings", "is_first_view": True}
    assert registry.validate(screen) == []
    ident = map_message({"type": "identify", "messageId": "i", "userId": "u-7",
                         "traits": {"email": "ann@example.com", "firstName": "Ann", "marketingOptIn": False}},
                        None, received_at=NOW)
    assert ident["event"] == "identify"
    assert ident["properties"] == {"email": "ann@example.com", "first_name": "Ann", "marketing_opt_in": False}
    assert registry.validate(ident) == []


@pytest.mark.parametrize("message, kind, reason", [
    ({"type": "group", "groupId": "g"}, None, "group calls are not supported"),
    ({"previousId": "a"}, "alias", "alias calls are not supported"),
    ({"type": "bogus"}, None, "is not a Segment call type"),
    ({"type": "track"}, None, "needs an event name"),
    ({"type": "track", "event": "x", "properties": [1]}, None, "properties: must be an object"),
    ({"type": "identify", "traits": {"firstName": 1, "first_name": 2}}, None, "both become 'first_name'"),
])
def test_unmappable_messages_say_why(message, kind, reason):
    with pytest.raises(Unmappable) as info:
        map_message({"messageId": "m", **message}, kind, received_at=NOW)
    assert reason in info.value.reasons[0]
    assert info.value.event_id == event_id_for({"messageId": "m"})


def test_batch_context_and_consent():
    event = map_message({"type": "track", "event": "Message Sent", "userId": "u", "context": {"locale": "de-DE"}},
                        None, batch_context={"locale": "en-GB", "app": {"name": "Acme", "build": 431},
                                             "consent": {"categoryPreferences": {"Analytics": False, "Ads": True}}},
                        received_at=NOW)
    assert event["context"] == {"locale": "de-DE", "app": {"name": "Acme", "build": "431"}}
    assert event["consent"] == {"analytics": False}
