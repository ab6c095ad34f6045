"""The server-side emitter: its field tables match schemas/, and what it builds passes the real registry."""
from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest

from headwater_client import AnalyticsEmitter
from headwater_client.fields import EVENTS
from ingest_gateway.kv import MemoryKV
from ingest_gateway.signing import SignatureVerifier
from schemas.registry import SchemaRegistry
from tests.unit.headwater_client.conftest import KID, MASTER_KEY

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


@pytest.fixture
def emitter(gateway, tmp_path):
    e = AnalyticsEmitter(gateway.url, service="billing", kid=KID, master_key=MASTER_KEY,
                         queue_path=tmp_path / "emitter.sqlite3", flush_interval=0, backoff_base=0.01,
                         backoff_max=0.05)
    yield e
    e.close(timeout=0.5)


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_field_table_matches_the_schema(event):
    schema = json.loads((SCHEMAS / f"{event}.schema.json").read_text())
    fields = EVENTS[event]
    assert set(fields) == set(schema["properties"])
    for name, spec in schema["properties"].items():
        field = fields[name]
        types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        assert set(field.types) == set(types), name
        assert (field.enum and list(field.enum)) == spec.get("enum"), name
        if spec["type"] == "array":
            assert list(field.items.enum) == spec["items"]["enum"]
        if "pattern" in spec:
            assert field.pattern == spec["pattern"], name
        for key in ("minimum", "maximum", "maxLength", "minLength"):
            attr = {"maxLength": "max_length", "minLength": "min_length"}.get(key, key)
            if key in spec:
                assert getattr(field, attr) == spec[key], (name, key)


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_typed_method_requires_exactly_the_schema_s_required_fields(event):
    import inspect
    schema = json.loads((SCHEMAS / f"{event}.schema.json").read_text())
    params = inspect.signature(getattr(AnalyticsEmitter, event)).parameters
    required = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and p.default is p.empty} - {"user_id"}
    assert required == set(schema["required"])


def test_emitted_events_pass_the_registry_and_are_signed_as_the_service(gateway, emitter):
    registry = SchemaRegistry.load(SCHEMAS)
    sub = str(uuid.uuid4())
    emitter.subscription_started(user_id="u-1", subscription_id="sub_1", plan_id="team_monthly_v3",
                                 billing_interval="month", amount_minor=4900, currency="EUR", seats=5,
                                 discount={"coupon_code": "WELCOME", "percent_off": 10}, plan_name=None)
    emitter.subscription_cancelled(user_id="u-1", subscription_id="sub_1", plan_id="team_monthly_v3",
                                   reason="too_expensive", cancel_at_period_end=True,
                                   effective_at=dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc))
    emitter.payment_failed(user_id="u-1", payment_id="pay_9", amount_minor=4900, currency="EUR",
                           failure_code="card_declined", attempt_number=2, will_retry=True)
    emitter.automation_run(automation_id="welcome-flow", run_id=sub, trigger="event", status="succeeded",
                           duration_ms=120, actions=["send_email", "add_tag"])
    emitter.moderation_action(community_id="c-1", action="ban", target_type="user", target_id="u-2",
                              automated=False, moderator_user_id="u-3", duration_seconds=None)
    emitter.message_sent(user_id="u-2", message_id="m-1", conversation_id="conv-1", channel_type="group",
                         message_type="text", length_chars=42)
    emitter.community_join(user_id="u-4", community_id="c-1", join_source="invite_link", invite_code="ABCD-12")
    assert emitter.flush().accepted == 7
    (request,) = gateway.received
    device, _ = SignatureVerifier({KID: MASTER_KEY}, 300, MemoryKV()).verify(request.headers, request.raw)
    assert device == "svc:billing"
    for event in request.doc["batch"]:
        assert registry.validate(event) == [], event
        assert event["device_id"] == "svc:billing"
    by_name = {e["event"]: e for e in request.doc["batch"]}
    assert "plan_name" not in by_name["subscription_started"]["properties"]
    assert by_name["automation_run"]["anonymous_id"] == "svc:billing" and "user_id" not in by_name["automation_run"]
    assert by_name["moderation_action"]["properties"]["duration_seconds"] is None
    assert by_name["subscription_cancelled"]["properties"]["effective_at"] == "2027-01-01T00:00:00Z"


def test_wrong_calls_fail_before_anything_is_queued(emitter):
    with pytest.raises(TypeError):  # a required field missing
        emitter.payment_failed(user_id="u", payment_id="p", amount_minor=1, currency="EUR", attempt_number=1)
    with pytest.raises(ValueError, match="failure_code"):
        emitter.payment_failed(user_id="u", payment_id="p", amount_minor=1, currency="EUR",
                               failure_code="nope", attempt_number=1)
    with pytest.raises(TypeError, match="amount_minor"):
        emitter.subscription_started(user_id="u", subscription_id="s", plan_id="p", billing_interval="month",
                                     amount_minor="49.00", currency="EUR")
    with pytest.raises(TypeError, match="colour"):
        emitter.community_join(user_id="u", community_id="c", join_source="search", colour="red")
    with pytest.raises(ValueError, match="currency"):
        emitter.subscription_started(user_id="u", subscription_id="s", plan_id="p", billing_interval="month",
                                     amount_minor=1, currency="eur")
    with pytest.raises(ValueError, match="percent_off"):
        emitter.subscription_started(user_id="u", subscription_id="s", plan_id="p", billing_interval="month",
                                     amount_minor=1, currency="EUR", discount={"coupon_code": "X", "percent_off": 0})
    with pytest.raises(TypeError):
        emitter.message_sent(user_id="u", message_id="m", conversation_id="c", channel_type="group",
                             message_type="text", length_chars=True)
    with pytest.raises(ValueError):
        AnalyticsEmitter("http://127.0.0.1:1", service="bad service", kid=KID, master_key=MASTER_KEY)
    assert emitter.stats["pending"] == 0
