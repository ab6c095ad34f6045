"""Checks for the properties of the server-side events, mirroring ``schemas/<event>.schema.json`` so a
wrong call fails in the caller's process (TypeError for a wrong type or an unknown field, ValueError for a
value out of range) rather than as a rejection at the gateway. The unit tests compare these tables with the
schemas, so they cannot drift apart unnoticed."""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Callable

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


@dataclass(frozen=True)
class Field:
    """One property: its JSON type(s), and the constraints the client checks early."""

    types: tuple[str, ...]
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    items: "Field | None" = None
    convert: Callable[[Any], Any] | None = None

    def check(self, name: str, value: Any) -> Any:
        if self.convert is not None:
            value = self.convert(value)
        kind = _json_type(value)
        if kind not in self.types and not (kind == "integer" and "number" in self.types):
            raise TypeError(f"{name} must be {' or '.join(self.types)}, got {type(value).__name__}")
        if value is None:
            return value
        if self.enum is not None and value not in self.enum:
            raise ValueError(f"{name} must be one of {', '.join(self.enum)}; got {value!r}")
        if isinstance(value, str):
            if self.pattern is not None and not re.match(self.pattern, value):
                raise ValueError(f"{name} must match {self.pattern}; got {value!r}")
            if self.min_length is not None and len(value) < self.min_length:
                raise ValueError(f"{name} must have at least {self.min_length} characters")
            if self.max_length is not None and len(value) > self.max_length:
                raise ValueError(f"{name} must have at most {self.max_length} characters")
        if kind in ("integer", "number"):
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"{name} must be >= {self.minimum:g}; got {value}")
            if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
                raise ValueError(f"{name} must be > {self.exclusive_minimum:g}; got {value}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"{name} must be <= {self.maximum:g}; got {value}")
        if kind == "array" and self.items is not None:
            value = [self.items.check(f"{name}[{i}]", item) for i, item in enumerate(value)]
            if len(set(map(repr, value))) != len(value):
                raise ValueError(f"{name} must not repeat items")
        return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _datetime(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    return value


def ident() -> Field:
    return Field(("string",), pattern=ID_PATTERN)


def text(max_length: int, min_length: int | None = None) -> Field:
    return Field(("string",), min_length=min_length, max_length=max_length)


def enum(*values: str) -> Field:
    return Field(("string",), enum=values)


def integer(minimum: int | None = None, maximum: int | None = None) -> Field:
    return Field(("integer",), minimum=minimum, maximum=maximum)


BOOL = Field(("boolean",))
DATE_TIME = Field(("string",), convert=_datetime, pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
CURRENCY = Field(("string",), pattern=r"^[A-Z]{3}$")
COUNTRY = Field(("string",), pattern=r"^[A-Z]{2}$")
EMAIL = Field(("string",), pattern=r"^[^@\s]+@[^@\s]+$")
URI = Field(("string",), pattern=r"^[A-Za-z][A-Za-z0-9+.-]*:", max_length=2048)
USER_REF = text(128, 1)

DISCOUNT = Field(("object",))

EVENTS: dict[str, dict[str, Field]] = {
    "subscription_started": {
        "subscription_id": ident(), "plan_id": ident(), "plan_name": text(100), "previous_plan_id": ident(),
        "billing_interval": enum("week", "month", "quarter", "year"),
        "amount_minor": integer(0, 100_000_000_000), "currency": CURRENCY, "seats": integer(1, 1_000_000),
        "trial_days": integer(0, 365),
        "payment_provider": enum("stripe", "paddle", "braintree", "app_store", "google_play", "invoice"),
        "discount": DISCOUNT, "billing_email": EMAIL,
    },
    "subscription_cancelled": {
        "subscription_id": ident(), "plan_id": ident(),
        "reason": enum("too_expensive", "missing_features", "switched_service", "unused", "technical_issues",
                       "customer_service", "temporary", "payment_failed", "other"),
        "reason_comment": text(2000), "initiated_by": enum("user", "admin", "system", "dunning"),
        "cancel_at_period_end": BOOL, "effective_at": DATE_TIME, "tenure_days": integer(0),
        "mrr_lost_minor": integer(0), "currency": CURRENCY, "offered_retention_discount": BOOL,
    },
    "payment_failed": {
        "payment_id": ident(), "subscription_id": ident(), "invoice_id": ident(),
        "amount_minor": integer(0, 100_000_000_000), "currency": CURRENCY,
        "failure_code": enum("card_declined", "insufficient_funds", "expired_card", "incorrect_cvc",
                             "authentication_required", "processing_error", "fraudulent", "other"),
        "provider_code": text(100), "attempt_number": integer(1, 50), "will_retry": BOOL,
        "next_retry_at": DATE_TIME,
        "payment_method_type": enum("card", "sepa_debit", "ach_debit", "paypal", "apple_pay", "google_pay",
                                    "invoice"),
        "card_brand": enum("visa", "mastercard", "amex", "discover", "jcb", "unionpay", "diners", "other"),
        "billing_country": COUNTRY, "billing_postcode": text(16),
    },
    "automation_run": {
        "automation_id": ident(), "automation_name": text(200), "automation_version": integer(1),
        "run_id": Field(("string",), pattern=UUID_PATTERN),
        "trigger": enum("schedule", "event", "webhook", "manual", "api"),
        "status": enum("succeeded", "failed", "partial", "skipped", "timed_out"),
        "duration_ms": integer(0, 86_400_000), "steps_total": integer(0, 10_000),
        "steps_failed": integer(0, 10_000),
        "actions": Field(("array",), items=enum("send_email", "send_message", "add_tag", "remove_tag",
                                                "assign_role", "update_field", "webhook", "wait")),
        "records_processed": integer(0), "error_code": Field(("string",), pattern=r"^[a-z][a-z0-9_.]{0,99}$"),
    },
    "moderation_action": {
        "community_id": ident(),
        "action": enum("warn", "mute", "unmute", "kick", "ban", "unban", "delete_message", "hide_message",
                       "approve_message", "lock_thread"),
        "target_type": enum("user", "message", "thread", "comment"), "target_id": USER_REF,
        "target_user_id": USER_REF, "moderator_user_id": USER_REF, "automated": BOOL, "rule_id": ident(),
        "reason": enum("spam", "harassment", "hate_speech", "nsfw", "off_topic", "self_promotion",
                       "impersonation", "other"),
        "note": text(2000), "duration_seconds": Field(("integer", "null"), minimum=1, maximum=315_360_000),
        "appeal_allowed": BOOL,
    },
    "message_sent": {
        "message_id": ident(), "conversation_id": ident(), "community_id": ident(),
        "channel_type": enum("direct", "group", "channel", "thread", "comment"),
        "message_type": enum("text", "image", "video", "file", "audio", "poll", "sticker", "system"),
        "length_chars": integer(0, 100_000), "attachment_count": integer(0, 50),
        "mention_count": integer(0, 1000), "contains_link": BOOL, "is_reply": BOOL,
        "reply_to_message_id": ident(), "recipient_count": integer(0),
        "sent_via": enum("web", "ios", "android", "desktop", "api", "email_reply", "integration"),
        "edited_within_seconds": integer(0),
    },
    "community_join": {
        "community_id": ident(), "community_name": text(200),
        "join_source": enum("invite_link", "search", "recommendation", "direct", "import", "api"),
        "invite_code": Field(("string",), pattern=r"^[A-Za-z0-9_-]{4,64}$"), "inviter_user_id": USER_REF,
        "role": enum("member", "guest", "moderator", "admin"), "requires_approval": BOOL, "is_rejoin": BOOL,
        "member_count": integer(0), "referrer_url": URI,
    },
}

_DISCOUNT_FIELDS = {"coupon_code": text(64, 1), "percent_off": Field(("number",), exclusive_minimum=0, maximum=100),
                    "amount_off_minor": integer(0), "duration_months": integer(1, 120)}


def build_properties(event: str, required: dict[str, Any], optional: dict[str, Any]) -> dict[str, Any]:
    """Check ``required`` and ``optional`` keyword arguments against the event's table.

    :raises TypeError: an unknown field or a wrong type
    :raises ValueError: a value outside what the schema allows
    """
    fields = EVENTS[event]
    unknown = sorted(set(optional) - set(fields))
    if unknown:
        raise TypeError(f"{event}() got unexpected field(s): {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for name, value in {**required, **optional}.items():
        if value is None and name in optional and "null" not in fields[name].types:
            continue  # an optional field passed as None is simply left out
        out[name] = fields[name].check(name, value)
    discount = out.get("discount")
    if discount is not None:
        extra = sorted(set(discount) - set(_DISCOUNT_FIELDS))
        if extra:
            raise TypeError(f"discount got unexpected field(s): {', '.join(extra)}")
        if "coupon_code" not in discount:
            raise ValueError("discount needs a coupon_code")
        out["discount"] = {k: _DISCOUNT_FIELDS[k].check(f"discount.{k}", v) for k, v in discount.items()}
    return out
