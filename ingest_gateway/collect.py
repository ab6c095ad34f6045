"""``POST /analytics/collect``: the native ingest endpoint.

Order of checks, cheapest and most protective first: load (429) → compressed size → signature (before
anything is inflated, so an unsigned gzip bomb costs nothing) → inflate within the limit → idempotent retry
→ JSON shape → per event: size, consent, opt-out, schema, signing device → replay check and event-id dedup
(one round trip to Redis; a replayed request is refused there, before anything is published, audited or
counted) → publish (Kafka or spool) → audit of rejections → answer. A per-event problem never fails the
request: the answer lists each rejected event with its reasons.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response

from ingest_gateway.answer import Answer
from ingest_gateway.body import (BodyError, encoded_events, inflate, oversized_events, parse_batch, read_body,
                                 split_batch)
from ingest_gateway.dedup import IdempotencyCache, IdempotencyError, StoredResponse
from ingest_gateway.gateway import Gateway
from ingest_gateway.ingest import RequestRefused, guarded, ingest, now_rfc3339
from ingest_gateway.signing import HEADER_DEVICE, SignatureError

log = logging.getLogger("headwater.gateway.collect")
ROUTE = "/analytics/collect"
CONTEXT = "context"

__all__ = ["RequestRefused", "collect", "error_response", "serve_collect", "is_collect"]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def error_response(status: int, code: str, message: str, request_id: str | None,
                   retry_after: int | None = None) -> Response:
    return error_answer(status, code, message, request_id, retry_after).to_response()


def error_answer(status: int, code: str, message: str, request_id: str | None,
                 retry_after: int | None = None) -> Answer:
    """The machine-readable error document every gateway endpoint answers with."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = orjson.dumps({"error": {"code": code, "message": message}, "request_id": request_id})
    return Answer(status, body, headers)


async def collect(request: Request) -> Response:
    """The Starlette route (the app serves the path with :func:`serve_collect` before routing)."""
    gw: Gateway = request.app.state.gateway
    answer = await guarded(gw, request, ROUTE,
                           lambda request_id: _collect(gw, request, request.stream(), request_id), error_answer)
    return answer.to_response()


def is_collect(scope: dict[str, Any]) -> bool:
    """Whether ``scope`` is a ``POST /analytics/collect`` (every other method goes through the router: 405)."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path == ROUTE


async def serve_collect(gw: Gateway, scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """``POST /analytics/collect`` as a plain ASGI handler: no routing, middleware or request and response
    objects, the same checks, answers, metrics and logs as the route.

    As Starlette's outermost middleware does, an unexpected exception is answered with a plain 500 (when
    nothing was sent yet) and raised again for the server to log.
    """
    started = False

    async def tracked(message: dict[str, Any]) -> None:
        nonlocal started
        started = True
        await send(message)

    connection = HTTPConnection(scope)
    try:
        answer = await guarded(gw, connection, ROUTE,
                               lambda request_id: _collect(gw, connection, _body_chunks(receive), request_id),
                               error_answer)
        await answer.send(tracked)
    except Exception:
        if not started:
            await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)
        raise


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives (as ``Request.stream``; a client that goes away raises
    ``ClientDisconnect``)."""
    while True:
        message = await receive()
        if message["type"] == "http.request":
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


async def _collect(gw: Gateway, request: HTTPConnection, chunks: AsyncIterator[bytes], request_id: str) -> Answer:
    settings, headers = gw.settings, request.headers
    try:
        raw = await read_body(chunks, headers.get("content-length"), settings.max_body_bytes)
        device, signature = headers.get(HEADER_DEVICE), None
        if gw.require_signature:
            device, signature = gw.verifier.verify(headers, raw)
        data = inflate(raw, headers.get("content-encoding"), settings.max_decompressed_bytes)
    except BodyError as exc:
        raise RequestRefused(exc.status, exc.code, exc.message) from None
    except SignatureError as exc:
        raise RequestRefused(401, exc.code, exc.message) from None

    idem_key = headers.get("idempotency-key")
    cache_key = body_hash = None
    if idem_key is not None:
        body_hash = hashlib.sha256(data).hexdigest()
        try:
            cache_key = IdempotencyCache.key(device or "-", idem_key)
            stored = await gw.idempotency.begin(cache_key, body_hash)
        except IdempotencyError as exc:
            raise RequestRefused(exc.status, exc.code, exc.message) from None
        except RedisError as exc:
            gw.metrics.dependency_errors.labels("redis").inc()
            raise RequestRefused(503, "dependency_unavailable", f"idempotency store unavailable: {exc}",
                                 gw.options.retry_after_seconds) from None
        if stored is not None:
            log.info("idempotent retry answered from the first response")
            return Answer(stored.status, stored.body, {"Idempotent-Replayed": "true"})
    try:
        answer = await _process(gw, request, request_id, data, device, signature)
    except BaseException:
        if cache_key is not None:
            await _forget(gw, cache_key)
        raise
    if cache_key is not None:
        try:
            await gw.idempotency.finish(cache_key, body_hash, StoredResponse(answer.status_code, answer.body))
        except RedisError as exc:  # the events are durable; only a later retry would be published again
            gw.metrics.dependency_errors.labels("redis").inc()
            log.warning("could not store the idempotent answer: %s", exc)
    return answer


async def _forget(gw: Gateway, cache_key: str) -> None:
    try:
        await gw.idempotency.abandon(cache_key)
    except RedisError:
        gw.metrics.dependency_errors.labels("redis").inc()


def _context_verdicts(registry: Any, contexts: list[bytes | None]) -> list[bool | None] | None:
    """Per event, the registry's verdict on its context text (``None`` for an event without one), or ``None`` when a
    context is not JSON at all. The events of one request nearly always carry the same context, byte for byte: a
    text equal to the one before takes its verdict without a look-up (which would hash the whole text again)."""
    check = registry.check_shared_text
    verdicts: list[bool | None] = []
    last_text = last_verdict = None
    for text in contexts:
        if text is None:
            verdicts.append(None)
            continue
        if text != last_text:
            last_verdict = check(CONTEXT, text)
            if last_verdict is None:
                return None
            last_text = text
        verdicts.append(last_verdict)
    return verdicts


async def _process(gw: Gateway, request: HTTPConnection, request_id: str, data: bytes,
                   device: str | None, signature: str | None) -> Answer:
    settings, registry = gw.settings, gw.registry
    contexts_ok = None
    try:
        if CONTEXT in registry.shared_parts:
            batch = split_batch(data, settings.max_batch_events)
            if batch.contexts is not None:
                contexts_ok = _context_verdicts(registry, batch.contexts)
                if contexts_ok is None:
                    # A context that is not JSON: the body is malformed, and parse_batch says how.
                    batch = parse_batch(data, settings.max_batch_events)
        else:
            batch = parse_batch(data, settings.max_batch_events)
    except BodyError as exc:
        raise RequestRefused(exc.status, exc.code, exc.message) from None

    limit = settings.max_event_bytes
    encoded = encoded_events(batch, limit)
    refused = {index: [f"(event): {size} bytes is over the limit of {limit} bytes per event"]
               for index, size in oversized_events(batch, limit, encoded).items()}
    outcome = await ingest(gw, request, request_id, batch.events, source="native", received_at=now_rfc3339(),
                           sent_at=batch.sent_at, consent=batch.analytics_consent, refused=refused,
                           device=device, signature=signature, encoded=encoded, contexts_ok=contexts_ok)
    answer: dict[str, Any] = {
        "accepted": outcome.accepted, "duplicates": outcome.duplicates, "no_consent": outcome.no_consent,
        "rejected": [{"index": i, "event_id": event_id, "errors": reasons}
                     for i, event_id, reasons in outcome.rejected],
    }
    if outcome.dark_mode:
        answer["dark"] = outcome.dark
    return Answer(200, orjson.dumps(answer))
