"""Fixtures for the schema package's tests: one registry per session, and valid events to start from."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from schemas import SchemaRegistry

EVENT_ID = "0b7c1a39-8f2e-4c55-9a0e-3c8d2f1b6e41"

CONTEXT: dict[str, Any] = {
    "app": {"name": "Acme Community", "version": "4.12.0", "build": "4120", "namespace": "com.acme.community"},
    "locale": "en-US",
    "timezone": "Europe/Berlin",
    "device": {"type": "phone", "model": "iPhone15,3", "manufacturer": "Apple", "os": "iOS", "os_version": "17.4.1"},
    "ip": "203.0.113.7",
    "user_agent": "AcmeCommunity/4.12.0 (iPhone; iOS 17.4.1; Scale/3.00)",
    "library": {"name": "headwater-swift", "version": "1.3.0"},
    "campaign": {"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "spring_launch"},
    "experiments": {"onboarding_v2": "treatment", "pricing.page:2026": "control"},
}


def make_event(name: str, properties: dict[str, Any], **envelope: Any) -> dict[str, Any]:
    """A valid envelope around ``properties``; keyword arguments replace envelope fields (None removes one).

    :param name: event name.
    :param properties: the payload.
    """
    event: dict[str, Any] = {
        "event": name,
        "event_id": EVENT_ID,
        "timestamp": "2026-12-03T12:00:00.123Z",
        "sent_at": "2026-12-03T12:00:01.456+01:00",
        "user_id": "usr_84c1",
        "anonymous_id": "anon_5f2d9a",
        "device_id": "dev_0c44",
        "properties": copy.deepcopy(properties),
        "context": copy.deepcopy(CONTEXT),
        "consent": {"analytics": True, "marketing": False, "policy_version": "2026-03"},
    }
    for key, value in envelope.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


@pytest.fixture(scope="session")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()
