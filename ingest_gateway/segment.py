"""The Segment-compatible Tracking API: ``POST /v1/batch|track|identify|page|screen|group|alias``.

Segment's and RudderStack's SDKs (and anything else speaking the Tracking API) point their ``host`` at the
gateway. Authentication is a write key (``settings.write_keys``): HTTP Basic with the key as user name and
an empty password, or ``writeKey`` in the body as some SDKs send it. Messages are translated into our
envelope (see :mod:`ingest_gateway.segment_map`) and then take exactly the native path: limits, consent,
opt-out, schema validation, event-id dedup, publishing with ``source="segment"``, audit of rejections.

Answers have Segment's shape: ``200 {"success": true, ...}`` once the batch is durable, with the counts and
the per-event rejections alongside (Segment's SDKs ignore them; people debugging read them);
``4xx {"success": false, "code": ..., "message": ...}`` for a request refused as a whole (the SDKs read
``code`` and ``message``). A retried message keeps its ``messageId`` and so its event id: de-duplication
covers SDK retries, so no ``Idempotency-Key`` is needed here.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ingest_gateway.body import BodyError, inflate, load_json_object, read_body
from ingest_gateway.gateway import Gateway
from ingest_gateway.ingest import RequestRefused, guarded, ingest, now_rfc3339
from ingest_gateway.segment_map import Unmappable, event_id_for, map_message
from schemas.formats import is_date_time

log = logging.getLogger("headwater.gateway.segment")
CALLS = ("batch", "track", "identify", "page", "screen", "group", "alias")


def segment_error(status: int, code: str, message: str, request_id: str | None,
                  retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="headwater"'
    body = orjson.dumps({"success": False, "code": code, "message": message, "request_id": request_id})
    return Response(body, status, headers=headers or None, media_type="application/json")


def basic_auth_user(header: str) -> str | None:
    """The user name of an ``Authorization: Basic`` header (the write key), None when it is not Basic.

    :raises RequestRefused: 401 when it claims to be Basic but cannot be decoded
    """
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise RequestRefused(401, "unauthorized", "the Basic credentials are not valid base64 of 'writeKey:'") from None
    return decoded.partition(":")[0]


def _known_key(gw: Gateway, key: Any) -> bool:
    if not isinstance(key, str) or not key:
        return False
    given = key.encode()
    # Compare against every key, so the time taken does not tell which one nearly matched.
    found = False
    for candidate in gw.write_keys:
        found |= hmac.compare_digest(given, candidate)
    return found


async def segment_call(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    call = request.path_params["call"]
    if call not in CALLS:
        async def unknown(request_id: str) -> Response:
            raise RequestRefused(404, "not_found", f"unknown call /v1/{call[:40]}; use one of "
                                 + ", ".join(f"/v1/{c}" for c in CALLS))
        return await guarded(gw, request, "/v1/{unknown}", unknown, segment_error)
    return await guarded(gw, request, f"/v1/{call}", lambda request_id: _handle(gw, request, request_id, call),
                         segment_error)


async def _handle(gw: Gateway, request: Request, request_id: str, call: str) -> Response:
    settings, headers = gw.settings, request.headers
    if not gw.write_keys:
        raise RequestRefused(403, "segment_disabled", "no write keys are configured on this gateway")
    try:
        raw = await read_body(request.stream(), headers.get("content-length"), settings.max_body_bytes)
        header_key = basic_auth_user(headers.get("authorization", ""))
        if header_key is not None and not _known_key(gw, header_key):
            raise RequestRefused(401, "unauthorized", "the write key is not valid")
        data = inflate(raw, headers.get("content-encoding"), settings.max_decompressed_bytes)
        doc = _parse(data)
    except BodyError as exc:
        raise RequestRefused(exc.status, exc.code, exc.message) from None
    if header_key is None and not _known_key(gw, doc.get("writeKey")):
        raise RequestRefused(401, "unauthorized", "a write key is required: HTTP Basic with the write key as "
                                                  "user name, or writeKey in the body")
    if call == "batch":
        messages = doc.get("batch")
        if not isinstance(messages, list):
            raise RequestRefused(400, "invalid_body", "'batch' must be an array of messages")
        if not messages:
            raise RequestRefused(400, "empty_batch", "'batch' holds no messages")
        limit = gw.options.segment_max_batch_events
        if len(messages) > limit:
            raise RequestRefused(413, "too_many_events", f"'batch' holds {len(messages)} messages; the limit is {limit}")
        kind = None
    else:
        messages, kind = [doc], call
    sent_at = doc.get("sentAt")
    if not (isinstance(sent_at, str) and is_date_time(sent_at)):
        sent_at = None

    received_at = now_rfc3339()
    size_limit = settings.max_event_bytes
    check_sizes = len(data) > size_limit  # a smaller body cannot hold a message over the limit
    batch_context = doc.get("context") if call == "batch" else None
    events: list[Any] = []
    refused: dict[int, list[str]] = {}
    for index, message in enumerate(messages):
        if check_sizes:
            size = len(orjson.dumps(message))
            if size > size_limit:
                refused[index] = [f"(event): {size} bytes is over the limit of {size_limit} bytes per event"]
                events.append({"event_id": _event_id_or_none(message)})
                continue
        try:
            events.append(map_message(message, kind, batch_context=batch_context, sent_at=sent_at,
                                      received_at=received_at))
        except Unmappable as exc:
            refused[index] = exc.reasons
            events.append({"event_id": exc.event_id} if exc.event_id else {})
    outcome = await ingest(gw, request, request_id, events, source="segment", received_at=received_at,
                           sent_at=sent_at, refused=refused, payloads=messages)
    answer: dict[str, Any] = {
        "success": True, "accepted": outcome.accepted, "duplicates": outcome.duplicates,
        "no_consent": outcome.no_consent,
        "rejected": [{"index": i, "event_id": event_id, "message_id": _message_id(messages[i]), "errors": reasons}
                     for i, event_id, reasons in outcome.rejected],
    }
    if outcome.dark_mode:
        answer["dark"] = outcome.dark
    return Response(orjson.dumps(answer), 200, media_type="application/json")


def _parse(data: bytes) -> dict[str, Any]:
    return load_json_object(data, "body must be a JSON object")


def _message_id(message: Any) -> str | None:
    value = message.get("messageId") if isinstance(message, dict) else None
    return value if isinstance(value, str) and len(value) <= 256 else None


def _event_id_or_none(message: Any) -> str | None:
    return event_id_for(message) if isinstance(message, dict) else None
