"""Translating Segment Tracking API messages into Headwater's event envelope (pure functions).

How a Segment call becomes an event:

============ ================================ =====================================================
Segment      Headwater ``event``              ``properties``
============ ================================ =====================================================
track        ``event`` in snake_case          ``properties`` (keys in snake_case)
page         ``page_viewed``                  ``properties`` (+ url/path/title/referrer/search from
                                              ``context.page``; ``category`` → ``page_category``)
screen       ``screen_viewed``                ``properties``; the call's ``name`` → ``screen_name``
identify     ``identify``                     ``traits``, else ``context.traits`` (RudderStack puts
                                              them there), keys in snake_case
group        refused                          the catalogue has no group schema: group membership
                                              belongs in the OLTP database, not the event stream
alias        refused                          identity merges are not an analytics event here; send
                                              ``identify`` with the new ``userId`` instead
============ ================================ =====================================================

Ids: ``messageId`` becomes ``event_id`` as it is when it is a UUID, otherwise a UUIDv5 derived from it
(stable, so a retried message is de-duplicated); a message without one gets a UUIDv5 of its content.
``userId``/``anonymousId`` become ``user_id``/``anonymous_id`` (null or empty ones are left out; numbers
become strings), ``context.device.id`` becomes ``device_id``. The timestamp is ``timestamp``, else
``originalTimestamp``, else the batch's ``sentAt``, else the receive time.

Context: the parts our closed envelope knows are translated (app, locale, timezone, device + os, ip,
userAgent, library, campaign → utm_*); everything else (traits, page, network, screen, integrations, ...)
is left out rather than failing the event, as are values of the wrong shape (a non-IP ``ip``, a device
type outside our list). ``context.consent.categoryPreferences`` (Segment's consent management) becomes
``consent``; ``analytics: false`` there drops the event like a native one.
"""
from __future__ import annotations

import ipaddress
import re
import uuid
from typing import Any

import orjson
from urllib.parse import urlsplit

# Namespace of the UUIDv5 ids derived from Segment messageIds that are not UUIDs themselves.
SEGMENT_NAMESPACE = uuid.UUID("5b4f3c1e-6a47-5d0e-9c8e-2f1d7a3e9b10")
MESSAGE_TYPES = ("track", "page", "screen", "identify", "group", "alias")
UNSUPPORTED = {
    "group": "group calls are not supported: the event catalogue has no schema for group membership",
    "alias": "alias calls are not supported: send identify with the new userId instead",
}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DEVICE_TYPES = {**{t: t for t in ("phone", "tablet", "desktop", "tv", "wearable", "console", "server", "other")},
                 "mobile": "phone", "smartphone": "phone", "computer": "desktop", "pc": "desktop",
                 "watch": "wearable", "smarttv": "tv"}
_CAMPAIGN = {"source": "utm_source", "medium": "utm_medium", "name": "utm_campaign", "term": "utm_term",
             "content": "utm_content"}
_PAGE_FIELDS = ("url", "path", "title", "referrer", "search")
_CONSENT = {"analytics": "analytics", "marketing": "marketing", "advertising": "marketing",
            "personalization": "personalization", "personalisation": "personalization"}
_CAMEL_1 = re.compile(r"([a-z0-9])([A-Z])")
_CAMEL_2 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_NOT_WORD = re.compile(r"[^A-Za-z0-9]+")
_MAX_ID = 128


class Unmappable(ValueError):
    """A message that cannot become an event; ``reasons`` say why (they go to the client and the audit)."""

    def __init__(self, reasons: list[str], event_id: str | None = None, name: str | None = None):
        self.reasons, self.event_id, self.name = reasons, event_id, name
        super().__init__("; ".join(reasons))


def snake_case(name: str) -> str:
    """``Order Completed``, ``orderCompleted`` and ``order-completed`` all become ``order_completed``."""
    name = _CAMEL_2.sub(r"\1_\2", _CAMEL_1.sub(r"\1_\2", name))
    return _NOT_WORD.sub("_", name).strip("_").lower()


def event_id_for(message: dict[str, Any]) -> str:
    """``messageId`` when it is a UUID, else a UUIDv5 of it; of the message's content when it has none."""
    message_id = message.get("messageId")
    if isinstance(message_id, (int, float)) and not isinstance(message_id, bool):
        message_id = str(message_id)
    if isinstance(message_id, str) and message_id:
        if len(message_id) == 36 and _UUID.fullmatch(message_id):
            return message_id
        return str(uuid.uuid5(SEGMENT_NAMESPACE, message_id))
    try:
        content = orjson.dumps(message, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        content = repr(message).encode()
    return str(uuid.uuid5(SEGMENT_NAMESPACE, "content:" + content.decode("utf-8", "replace")))


def _an_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    return value if isinstance(value, str) and value else None


def _text(value: Any, limit: int) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if isinstance(value, str) and value and len(value) <= limit:
        return value
    return None


def _pick(source: Any, spec: dict[str, tuple[str, int]]) -> dict[str, str]:
    if not isinstance(source, dict):
        return {}
    out = {}
    for theirs, (ours, limit) in spec.items():
        value = _text(source.get(theirs), limit)
        if value is not None:
            out[ours] = value
    return out


def map_context(ctx: Any) -> dict[str, Any]:
    """Segment's ``context`` → ours, leaving out whatever our closed envelope has no place for."""
    if not isinstance(ctx, dict):
        return {}
    out: dict[str, Any] = {}
    app = _pick(ctx.get("app"), {"name": ("name", 100), "version": ("version", 64), "build": ("build", 64),
                                 "namespace": ("namespace", 255)})
    if app:
        out["app"] = app
    locale = _text(ctx.get("locale"), 35)
    if locale and re.fullmatch(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*", locale):
        out["locale"] = locale
    timezone = _text(ctx.get("timezone"), 64)
    if timezone and re.fullmatch(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*", timezone):
        out["timezone"] = timezone
    device = _pick(ctx.get("device"), {"model": ("model", 100), "manufacturer": ("manufacturer", 100)})
    raw_device = ctx.get("device")
    kind = raw_device.get("type") if isinstance(raw_device, dict) else None
    if isinstance(kind, str) and kind.lower() in _DEVICE_TYPES:  # "ios"/"android" say nothing of the form
        device["type"] = _DEVICE_TYPES[kind.lower()]
    device.update(_pick(ctx.get("os"), {"name": ("os", 64), "version": ("os_version", 64)}))
    if device:
        out["device"] = device
    ip = ctx.get("ip")
    if isinstance(ip, str) and len(ip) <= 45:
        try:
            ipaddress.ip_address(ip)
            out["ip"] = ip
        except ValueError:
            pass
    user_agent = _text(ctx.get("userAgent"), 1024)
    if user_agent:
        out["user_agent"] = user_agent
    library = _pick(ctx.get("library"), {"name": ("name", 100), "version": ("version", 64)})
    if "name" in library:
        out["library"] = library
    campaign = _pick(ctx.get("campaign"), {k: (v, 256) for k, v in _CAMPAIGN.items()})
    if campaign:
        out["campaign"] = campaign
    return out


def map_consent(ctx: Any) -> dict[str, bool] | None:
    consent = ctx.get("consent") if isinstance(ctx, dict) else None
    prefs = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    if not isinstance(prefs, dict):
        return None
    out = {}
    for key, value in prefs.items():
        ours = _CONSENT.get(str(key).lower())
        if ours and isinstance(value, bool):
            out[ours] = out.get(ours, True) and value
    return out or None


def _snake_keys(props: dict[str, Any], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in props.items():
        name = snake_case(key)
        if name in out:
            raise Unmappable([f"{what}: keys {key!r} and another one both become {name!r} in snake_case"])
        out[name] = value
    return out


def _object(message: dict[str, Any], key: str) -> dict[str, Any]:
    value = message.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unmappable([f"{key}: must be an object"])
    return value


def _page_properties(message: dict[str, Any], ctx: Any) -> dict[str, Any]:
    props = dict(_object(message, "properties"))
    page = ctx.get("page") if isinstance(ctx, dict) else None
    if isinstance(page, dict):
        for name in _PAGE_FIELDS:
            if name not in props and isinstance(page.get(name), str) and page[name]:
                props[name] = page[name]
    # Segment's own page fields that have no column here; category has one under another name.
    props.pop("name", None)
    props.pop("keywords", None)
    if "category" in props:
        category = props.pop("category")
        if category is not None:
            props.setdefault("page_category", category)
    if "path" not in props and isinstance(props.get("url"), str):
        try:
            props["path"] = urlsplit(props["url"]).path or "/"
        except ValueError:
            pass
    if props.get("search") == "":
        del props["search"]
    if props.get("referrer") == "":
        del props["referrer"]
    return _snake_keys(props, "properties")


def _screen_properties(message: dict[str, Any]) -> dict[str, Any]:
    props = _snake_keys(dict(_object(message, "properties")), "properties")
    name = props.pop("name", None)
    if message.get("name") is not None:
        name = message["name"]
    if name is not None:
        props.setdefault("screen_name", name)
    props.pop("category", None)
    return props


def map_message(message: Any, kind: str | None, *, batch_context: Any = None, sent_at: str | None = None,
                received_at: str) -> dict[str, Any]:
    """One Segment message → one event in our envelope (not yet validated: the registry does that).

    :param kind: the message type from the URL (``/v1/track``), or None to read ``type`` (``/v1/batch``)
    :param batch_context: a ``context`` given once for a whole batch; the message's own keys win
    :raises Unmappable: for a message that cannot be an event (its type, its name, its shape)
    """
    if not isinstance(message, dict):
        raise Unmappable(["(event): a message must be a JSON object"])
    event_id = event_id_for(message)
    kind = kind or message.get("type")
    if kind not in MESSAGE_TYPES:
        shown = kind if isinstance(kind, str) and len(kind) <= 32 else "?"
        raise Unmappable([f"type: {shown!r} is not a Segment call type ({', '.join(MESSAGE_TYPES)})"], event_id)
    if kind in UNSUPPORTED:
        raise Unmappable([f"type: {UNSUPPORTED[kind]}"], event_id)
    ctx = message.get("context")
    if isinstance(batch_context, dict) and batch_context:
        ctx = {**batch_context, **ctx} if isinstance(ctx, dict) else batch_context
    try:
        if kind == "track":
            raw_name = message.get("event")
            if not isinstance(raw_name, str) or not raw_name.strip():
                raise Unmappable(["event: a track call needs an event name"], event_id)
            name = snake_case(raw_name)
            properties = _snake_keys(_object(message, "properties"), "properties")
        elif kind == "page":
            name, properties = "page_viewed", _page_properties(message, ctx)
        elif kind == "screen":
            name, properties = "screen_viewed", _screen_properties(message)
        else:
            traits = message.get("traits")
            if traits is None and isinstance(ctx, dict) and isinstance(ctx.get("traits"), dict):
                traits = ctx["traits"]  # RudderStack's SDKs send identify traits only in the context
            name, properties = "identify", _snake_keys(_object({"traits": traits}, "traits"), "traits")
    except Unmappable as exc:
        raise Unmappable(exc.reasons, event_id) from None

    event: dict[str, Any] = {"event": name, "event_id": event_id}
    timestamp = message.get("timestamp") or message.get("originalTimestamp") or sent_at or received_at
    event["timestamp"] = timestamp
    for theirs, ours in (("userId", "user_id"), ("anonymousId", "anonymous_id")):
        value = _an_id(message.get(theirs))
        if value is not None:
            event[ours] = value
    device = ctx.get("device") if isinstance(ctx, dict) else None
    device_id = _an_id(device.get("id")) if isinstance(device, dict) else None
    if device_id is not None and len(device_id) <= _MAX_ID:
        event["device_id"] = device_id
    event["properties"] = properties
    context = map_context(ctx)
    if context:
        event["context"] = context
    consent = map_consent(ctx)
    if consent:
        event["consent"] = consent
    return event
