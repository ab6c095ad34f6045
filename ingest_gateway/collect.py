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
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from ingest_gateway.body import BodyError, encoded_events, inflate, oversized_events, parse_batch, read_body
from ingest_gateway.dedup import IdempotencyCache, IdempotencyError, StoredResponse
from ingest_gateway.gateway import Gateway
from ingest_gateway.ingest import RequestRefused, guarded, ingest, now_rfc3339
from ingest_gateway.signing import HEADER_DEVICE, SignatureError

log = logging.getLogger("headwater.gateway.collect")
ROUTE = "/analytics/collect"

__all__ = ["RequestRefused", "collect", "error_response"]


def error_response(status: int, code: str, message: str, request_id: str | None,
                   retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = orjson.dumps({"error": {"code": code, "message": message}, "request_id": request_id})
    return Response(body, status, headers=headers, media_type="application/json")


async def collect(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return await guarded(gw, request, ROUTE, lambda request_id: _collect(gw, request, request_id), error_response)


async def _collect(gw: Gateway, request: Request, request_id: str) -> Response:
    settings, headers = gw.settings, request.headers
    try:
        raw = await read_body(request.stream(), headers.get("content-length"), settings.max_body_bytes)
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
            return Response(stored.body, stored.status, media_type="application/json",
                            headers={"Idempotent-Replayed": "true"})
    try:
        response = await _process(gw, request, request_id, data, device, signature)
    except BaseException:
        if cache_key is not None:
            await _forget(gw, cache_key)
        raise
    if cache_key is not None:
        try:
            await gw.idempotency.finish(cache_key, body_hash, StoredResponse(response.status_code, response.body))
        except RedisError as exc:  # the events are durable; only a later retry would be published again
            gw.metrics.dependency_errors.labels("redis").inc()
            log.warning("could not store the idempotent answer: %s", exc)
    return response


async def _forget(gw: Gateway, cache_key: str) -> None:
    try:
        await gw.idempotency.abandon(cache_key)
    except RedisError:
        gw.metrics.dependency_errors.labels("redis").inc()


async def _process(gw: Gateway, request: Request, request_id: str, data: bytes,
                   device: str | None, signature: str | None) -> Response:
    settings = gw.settings
    try:
        batch = parse_batch(data, settings.max_batch_events)
    except BodyError as exc:
        raise RequestRefused(exc.status, exc.code, exc.message) from None

    limit = settings.max_event_bytes
    encoded = encoded_events(batch, limit)
    refused = {index: [f"(event): {size} bytes is over the limit of {limit} bytes per event"]
               for index, size in oversized_events(batch, limit, encoded).items()}
    outcome = await ingest(gw, request, request_id, batch.events, source="native", received_at=now_rfc3339(),
                           sent_at=batch.sent_at, consent=batch.analytics_consent, refused=refused,
                           device=device, signature=signature, encoded=encoded)
    answer: dict[str, Any] = {
        "accepted": outcome.accepted, "duplicates": outcome.duplicates, "no_consent": outcome.no_consent,
        "rejected": [{"index": i, "event_id": event_id, "errors": reasons}
                     for i, event_id, reasons in outcome.rejected],
    }
    if outcome.dark_mode:
        answer["dark"] = outcome.dark
    return Response(orjson.dumps(answer), 200, media_type="application/json")
