"""Realistic valid and invalid events across the catalogue: valid ones pass, invalid ones report every problem."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest

from schemas import SchemaRegistry, ValidationIssue

from .conftest import make_event

SUBSCRIPTION = {
    "subscription_id": "sub_1NzX8k",
    "plan_id": "team_monthly_v3",
    "plan_name": "Team",
    "previous_plan_id": "starter_monthly_v2",
    "billing_interval": "month",
    "amount_minor": 4900,
    "currency": "EUR",
    "seats": 5,
    "trial_days": 14,
    "payment_provider": "stripe",
    "discount": {"coupon_code": "SPRING24", "percent_off": 20, "duration_months": 3},
    "billing_email": "billing@acme.example",
}

VALID: dict[str, dict[str, Any]] = {
    "community_join_minimal": make_event("community_join", {"community_id": "cmty_42", "join_source": "search"}),
    "community_join_full": make_event("community_join", {
        "community_id": "cmty_42", "community_name": "Rust Berlin", "join_source": "invite_link",
        "invite_code": "Xk29-aa_q", "inviter_user_id": "usr_77", "role": "member", "requires_approval": False,
        "is_rejoin": True, "member_count": 1803, "referrer_url": "https://example.org/events?ref=nav",
    }),
    "subscription_started": make_event("subscription_started", SUBSCRIPTION),
    "subscription_cancelled": make_event("subscription_cancelled", {
        "subscription_id": "sub_1NzX8k", "plan_id": "team_monthly_v3", "reason": "too_expensive",
        "reason_comment": "We are a small club, this is too much for us.", "initiated_by": "user",
        "cancel_at_period_end": True, "effective_at": "2027-01-03T00:00:00Z", "tenure_days": 412,
        "mrr_lost_minor": 4900, "currency": "EUR", "offered_retention_discount": True,
    }),
    "payment_failed": make_event("payment_failed", {
        "payment_id": "py_3Ob2", "subscription_id": "sub_1NzX8k", "invoice_id": "in_9921", "amount_minor": 4900,
        "currency": "EUR", "failure_code": "insufficient_funds", "provider_code": "insufficient_funds",
        "attempt_number": 2, "will_retry": True, "next_retry_at": "2026-12-06T09:00:00+00:00",
        "payment_method_type": "card", "card_brand": "visa", "billing_country": "DE", "billing_postcode": "10115",
    }),
    "automation_run": make_event("automation_run", {
        "automation_id": "auto_welcome", "automation_name": "Welcome new members", "automation_version": 7,
        "run_id": "9f1c2b7e-3a44-4e1b-8c2d-6f0e1a2b3c4d", "trigger": "event", "status": "partial",
        "duration_ms": 1840, "steps_total": 4, "steps_failed": 1, "actions": ["send_message", "add_tag"],
        "records_processed": 1, "error_code": "smtp.timeout",
    }),
    "moderation_action_permanent_ban": make_event("moderation_action", {
        "community_id": "cmty_42", "action": "ban", "target_type": "user", "target_id": "usr_666",
        "moderator_user_id": "usr_12", "automated": False, "reason": "spam", "note": "Posted the same link 40 times",
        "duration_seconds": None, "appeal_allowed": True,
    }),
    "moderation_action_automated_mute": make_event("moderation_action", {
        "community_id": "cmty_42", "action": "mute", "target_type": "user", "target_id": "usr_666",
        "automated": True, "rule_id": "rule.flood", "reason": "spam", "duration_seconds": 3600,
    }),
    "message_sent": make_event("message_sent", {
        "message_id": "msg_7d1", "conversation_id": "conv_99", "community_id": "cmty_42", "channel_type": "thread",
        "message_type": "text", "length_chars": 212, "attachment_count": 0, "mention_count": 2,
        "contains_link": True, "is_reply": True, "reply_to_message_id": "msg_7c9", "recipient_count": 140,
        "sent_via": "ios", "edited_within_seconds": 30,
    }),
    "page_viewed_anonymous_ipv6": make_event("page_viewed", {
        "url": "https://acme.example/pricing?plan=team", "path": "/pricing", "title": "Pricing - Acme",
        "referrer": "https://www.google.com/", "search": "?plan=team", "page_category": "pricing",
        "load_time_ms": 930, "is_spa_navigation": False, "viewport": {"width": 1440, "height": 900},
    }, user_id=None, context={"ip": "2001:db8::8a2e:370:7334", "locale": "de", "library": {"name": "analytics.js"}}),
    "screen_viewed_nanosecond_timestamp": make_event("screen_viewed", {
        "screen_name": "CommunityFeed", "screen_class": "FeedViewController", "previous_screen_name": "Home",
        "load_time_ms": 120, "is_first_view": False, "orientation": "portrait",
    }, timestamp="2026-12-03T12:00:00.123456789-05:00"),
    "identify_traits": make_event("identify", {
        "email": "ada@example.com", "email_verified": True, "phone": "+4915123456789", "username": "ada_l",
        "name": "Ada Lovelace", "first_name": "Ada", "last_name": "Lovelace", "birth_date": "1990-02-28",
        "address": "12 Example Street, London", "postcode": "N1 9GU", "country": "GB",
        "avatar_url": "https://cdn.acme.example/a/ada.png", "company_id": "org_1", "company_name": "Analytical Engines",
        "role": "owner", "plan_id": "team_monthly_v3", "created_at": "2024-02-29T08:15:00Z",
        "preferred_language": "en-GB", "marketing_opt_in": False,
    }),
    "payment_failed_server_side_user_only": make_event("payment_failed", {
        "payment_id": "py_3Oc7", "amount_minor": 129900, "currency": "JPY", "failure_code": "expired_card",
        "attempt_number": 1, "will_retry": False,
    }, anonymous_id=None, device_id=None, sent_at=None, consent=None,
        context={"library": {"name": "headwater-python", "version": "0.1.0"}}),
    "identify_without_traits_minimal_envelope": {
        "event": "identify", "event_id": "E0B7C1A3-98F2-4C55-9A0E-3C8D2F1B6E41",
        "timestamp": "2026-12-03T12:00:00Z", "anonymous_id": "anon_1", "properties": {},
    },
}


def _without(path: list[str]) -> Callable[[dict[str, Any]], None]:
    def mutate(event: dict[str, Any]) -> None:
        *parents, last = path
        target = event
        for key in parents:
            target = target[key]
        del target[last]

    return mutate


def _setting(**values: Any) -> Callable[[dict[str, Any]], None]:
    # Keys are dotted paths ("properties.discount.percent_off").
    def mutate(event: dict[str, Any]) -> None:
        for dotted, value in values.items():
            *parents, last = dotted.split(".")
            target = event
            for key in parents:
                target = target[key]
            target[last] = value

    return mutate


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(event: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(event)

    return mutate


# (valid example to start from, mutation, every path that must be reported — no more, no fewer)
INVALID: dict[str, tuple[str, Callable[[dict[str, Any]], None], list[str]]] = {
    "join_source_not_in_enum": ("community_join_minimal", _setting(**{"properties.join_source": "foo"}), ["properties.join_source"]),
    "three_problems_three_issues": (
        "community_join_full",
        _both(_without(["event_id"]), _setting(timestamp="yesterday", **{"properties.member_count": -1})),
        ["event_id", "properties.member_count", "timestamp"],
    ),
    "neither_user_nor_anonymous_id": ("community_join_minimal", _both(_without(["user_id"]), _without(["anonymous_id"])), [""]),
    "unknown_event_name": ("community_join_minimal", _setting(event="community_joined"), ["event"]),
    "malformed_event_name_is_not_also_unknown": ("community_join_minimal", _setting(event="Community Join"), ["event"]),
    "subscription_money_fields": (
        "subscription_started",
        _both(_setting(**{"properties.currency": "eur", "properties.amount_minor": "4900"}), _without(["properties", "plan_id"])),
        ["properties.amount_minor", "properties.currency", "properties.plan_id"],
    ),
    "nested_discount": (
        "subscription_started",
        _setting(**{"properties.discount.percent_off": 0, "properties.discount.coupon": "X"}),
        ["properties.discount.coupon", "properties.discount.percent_off"],
    ),
    "array_items_and_uniqueness": (
        "automation_run",
        _setting(**{"properties.actions": ["add_tag", "add_tag", "launch_rocket"]}),
        ["properties.actions", "properties.actions[2]"],
    ),
    "moderation_zero_duration_and_missing_flag": (
        "moderation_action_automated_mute",
        _both(_setting(**{"properties.duration_seconds": 0}), _without(["properties", "automated"])),
        ["properties.automated", "properties.duration_seconds"],
    ),
    "page_url_path_viewport": (
        "page_viewed_anonymous_ipv6",
        _both(_setting(**{"properties.url": "not a url", "properties.path": "pricing"}), _without(["properties", "viewport", "height"])),
        ["properties.path", "properties.url", "properties.viewport.height"],
    ),
    "context_problems": (
        "message_sent",
        _setting(**{
            "context.app.version": "", "context.device.type": "fridge", "context.screen_size": "big",
            "context.experiments": {"bad key!": "a", "ok_key": ""},
        }),
        ["context.app.version", "context.device.type", "context.experiments", "context.experiments.ok_key", "context.screen_size"],
    ),
    "identify_pii_formats": (
        "identify_traits",
        _setting(**{"properties.email": "ada(at)example.com", "properties.phone": "0151 2345"}),
        ["properties.email", "properties.phone"],
    ),
    "unknown_top_level_key_and_payload_not_object": (
        "screen_viewed_nanosecond_timestamp",
        _setting(userId="usr_1", properties=["CommunityFeed"]),
        ["properties", "userId"],
    ),
    "impossible_calendar_day": ("community_join_minimal", _setting(timestamp="2023-02-29T10:00:00Z"), ["timestamp"]),
    "timestamp_without_offset": ("community_join_minimal", _setting(sent_at="2026-12-03T12:00:00"), ["sent_at"]),
    "event_id_not_uuid": ("payment_failed", _setting(event_id="12345"), ["event_id"]),
    "payload_missing": ("payment_failed", _without(["properties"]), ["properties"]),
    "payment_attempt_and_country": (
        "payment_failed",
        _setting(**{"properties.attempt_number": 0, "properties.billing_country": "de", "properties.card_brand": None}),
        ["properties.attempt_number", "properties.billing_country", "properties.card_brand"],
    ),
    "bad_ip_and_consent": (
        "subscription_cancelled",
        _setting(**{"context.ip": "999.1.1.1", "consent.analytics": "yes"}),
        ["consent.analytics", "context.ip"],
    ),
    "boolean_is_not_an_integer": ("message_sent", _setting(**{"properties.length_chars": True}), ["properties.length_chars"]),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_example_passes(registry: SchemaRegistry, name: str) -> None:
    assert registry.validate(copy.deepcopy(VALID[name])) == []


def test_valid_examples_cover_every_event(registry: SchemaRegistry) -> None:
    assert {event["event"] for event in VALID.values()} == set(registry.events)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_example_reports_every_problem(registry: SchemaRegistry, name: str) -> None:
    base, mutate, expected_paths = INVALID[name]
    event = copy.deepcopy(VALID[base])
    mutate(event)
    issues = registry.validate(event)
    assert all(isinstance(issue, ValidationIssue) and issue.message for issue in issues)
    assert sorted(issue.path for issue in issues) == sorted(expected_paths), issues
    assert [i.path for i in issues] == sorted(i.path for i in issues)


def _issue_at(issues: list[ValidationIssue], path: str) -> str:
    (message,) = [issue.message for issue in issues if issue.path == path]
    return message


def test_messages_name_the_rule_and_the_value(registry: SchemaRegistry) -> None:
    event = copy.deepcopy(VALID["community_join_minimal"])
    event["properties"]["join_source"] = "foo"
    event["properties"]["member_count"] = -1
    del event["event_id"]
    issues = registry.validate(event)
    assert _issue_at(issues, "properties.join_source") == (
        "'foo' is not one of ['invite_link', 'search', 'recommendation', 'direct', 'import', 'api']"
    )
    assert _issue_at(issues, "properties.member_count") == "-1 is less than the minimum of 0"
    assert _issue_at(issues, "event_id") == "'event_id' is a required property"


def test_either_identity_message(registry: SchemaRegistry) -> None:
    event = make_event("screen_viewed", {"screen_name": "Home"}, user_id=None, anonymous_id=None)
    assert registry.validate(event) == [ValidationIssue("", "at least one of 'user_id', 'anonymous_id' is required")]


def test_pii_values_never_appear_in_messages(registry: SchemaRegistry) -> None:
    event = copy.deepcopy(VALID["identify_traits"])
    event["properties"].update(email="ada-at-secret-domain", phone="555-SECRET", name=["Ada", "Lovelace"])
    event["context"]["ip"] = "10.0.0.999"
    issues = registry.validate(event)
    assert {issue.path for issue in issues} == {"properties.email", "properties.phone", "properties.name", "context.ip"}
    for issue in issues:
        assert "SECRET" not in issue.message.upper() and "secret" not in issue.message
        assert "999" not in issue.message and "Ada" not in issue.message
        assert "redacted" in issue.message


def test_long_values_are_shortened_in_messages(registry: SchemaRegistry) -> None:
    event = copy.deepcopy(VALID["screen_viewed_nanosecond_timestamp"])
    event["properties"]["screen_name"] = "S" * 5000
    (issue,) = registry.validate(event)
    assert issue.path == "properties.screen_name"
    assert "longer than the maximum length of 200" in issue.message
    assert len(issue.message) < 150


@pytest.mark.parametrize(("base", "mutate", "path", "message"), [
    ("message_sent", _setting(**{"properties.length_chars": "212"}), "properties.length_chars", "'212' is not of type 'integer'"),
    ("message_sent", _setting(**{"properties.attachment_count": 51}), "properties.attachment_count", "51 is greater than the maximum of 50"),
    ("message_sent", _setting(**{"properties.extra_field": {"a": 1}}), "properties.extra_field", "unexpected property: not declared in the schema"),
    ("subscription_cancelled", _setting(**{"properties.effective_at": "2027-02-30T00:00:00Z"}), "properties.effective_at", "'2027-02-30T00:00:00Z' is not a valid date-time"),
    ("subscription_started", _setting(**{"properties.discount.percent_off": 0}), "properties.discount.percent_off", "0 is not greater than 0"),
    ("automation_run", _setting(**{"properties.actions": ["wait", "wait"]}), "properties.actions", "array items are not unique"),
    ("automation_run", _setting(**{"context.app.version": ""}), "context.app.version", "'' is shorter than the minimum length of 1"),
    ("moderation_action_permanent_ban", _setting(**{"properties.duration_seconds": "forever"}), "properties.duration_seconds", "'forever' is not of type ['integer', 'null']"),
    ("page_viewed_anonymous_ipv6", _setting(**{"properties.viewport": [1440, 900]}), "properties.viewport", "array is not of type 'object'"),
    ("screen_viewed_nanosecond_timestamp", _setting(**{"context.experiments": {f"e{i}": "a" for i in range(101)}}), "context.experiments", "object has 101 properties, more than the maximum of 100"),
    ("payment_failed", _setting(**{"properties.currency": "euro"}), "properties.currency", "'euro' does not match pattern '^[A-Z]{3}$'"),
])
def test_message_wording(registry: SchemaRegistry, base: str, mutate: Callable[[dict[str, Any]], None], path: str, message: str) -> None:
    event = copy.deepcopy(VALID[base])
    mutate(event)
    assert registry.validate(event) == [ValidationIssue(path, message)]
