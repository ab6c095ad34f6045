"""``POST /analytics/collect``: the native ingest endpoint.

Order of checks, cheapest and most protective first: load (429) → compressed size → signature (before
anything is inflated, so an unsigned gzip bomb costs nothing) → inflate within the limit → idempotent retry
→ replay → JSON shape → per event: size, consent, opt-out, schema, signing device → event-id dedup →
publish (Kafka or spool) → audit of rejections → answer. A per-event problem never fails the request: the
answer lists each rejected event with its reasons.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import uuid
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from ingest_gateway.audit import RejectedEvent
from ingest_gateway.body import BodyError, inflate, oversized_events, parse_batch, read_body
from ingest_gateway.consent import event_denies_consent
from ingest_gateway.dedup import IdempotencyCache, IdempotencyError, StoredResponse
from ingest_gateway.gateway import Gateway
from ingest_gateway.logs import request_id_var
from ingest_gateway.producer import Message, SpoolFull
from ingest_gateway.signing import HEADER_DEVICE, SignatureError
from schemas.wire import RawRecord

log = logging.getLogger("headwater.gateway.collect")
ROUTE = "/analytics/collect"


class RequestRefused(Exception):
    """The whole request is refused with ``status`` and a machine-readable ``code``."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after
        super().__init__(f"{code}: {message}")


def error_response(status: int, code: str, message: str, request_id: str | None,
                   retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = orjson.dumps({"error": {"code": code, "message": message}, "request_id": request_id})
    return Response(body, status, headers=headers, media_type="application/json")


def _now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _client_ip(request: Request, trust_forwarded: bool) -> str | None:
    if trust_forwarded:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            return forwarded.split(",", 1)[0].strip() or None
    return request.client.host if request.client else None


def _format_issues(issues) -> list[str]:
    return [f"{i.path}: {i.message}" if i.path else f"(event): {i.message}" for i in issues]


async def collect(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        if gw.inflight >= gw.options.max_inflight_requests:
            gw.metrics.backpressure.labels("inflight").inc()
            response = error_response(429, "overloaded", "too many requests in flight; retry later",
                                      request_id, gw.options.retry_after_seconds)
        else:
            gw.inflight += 1
            gw.metrics.inflight.inc()
            try:
                response = await _collect(gw, request, request_id)
            except RequestRefused as exc:
                response = error_response(exc.status, exc.code, exc.message, request_id, exc.retry_after)
            finally:
                gw.inflight -= 1
                gw.metrics.inflight.dec()
        status = response.status_code
        response.headers["X-Request-ID"] = request_id
        return response
    finally:
        elapsed = time.perf_counter() - started
        gw.metrics.latency.labels(ROUTE).observe(elapsed)
        gw.metrics.requests.labels(ROUTE, str(status)).inc()
        request_id_var.reset(token)


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
    settings, options, metrics, registry = gw.settings, gw.options, gw.metrics, gw.registry
    if signature is not None:
        try:
            await gw.verifier.check_replay(signature)
        except SignatureError as exc:
            raise RequestRefused(401, exc.code, exc.message) from None
        except RedisError as exc:
            gw.metrics.dependency_errors.labels("redis").inc()
            raise RequestRefused(503, "dependency_unavailable", f"replay store unavailable: {exc}",
                                 options.retry_after_seconds) from None
    try:
        batch = parse_batch(data, settings.max_batch_events)
    except BodyError as exc:
        raise RequestRefused(exc.status, exc.code, exc.message) from None

    received_at = _now_rfc3339()
    events = batch.events
    no_consent = 0
    valid: list[dict[str, Any]] = []
    rejected: list[tuple[int, Any, list[str]]] = []
    if not batch.analytics_consent:
        no_consent = len(events)
    else:
        oversized = oversized_events(batch, settings.max_event_bytes)
        optouts = gw.optouts
        validate = registry.validate
        for index, event in enumerate(events):
            if oversized and index in oversized:
                rejected.append((index, event, [f"(event): {oversized[index]} bytes is over the limit of "
                                                f"{settings.max_event_bytes} bytes per event"]))
                continue
            if type(event) is dict and (event_denies_consent(event) or optouts.blocks(event)):
                no_consent += 1
                continue
            issues = validate(event)
            if issues:
                name = event.get("event") if type(event) is dict else None
                metrics.schema_failures.labels(name if name in registry else "unknown").inc()
                rejected.append((index, event, _format_issues(issues)))
                continue
            if device is not None and signature is not None and event.get("device_id", device) != device:
                rejected.append((index, event, ["device_id: does not match the signing device (X-Headwater-Device)"]))
                continue
            valid.append(event)

    duplicates = 0
    fresh = valid
    if valid and not gw.dark:
        ids = [e["event_id"] for e in valid]
        try:
            first = await gw.dedup.claim(ids)
        except RedisError as exc:  # fail open: downstream sinks are idempotent on event_id
            metrics.dependency_errors.labels("redis").inc()
            log.warning("event-id dedup unavailable, accepting without it: %s", exc)
            first = [True] * len(ids)
        if not all(first):
            fresh = [e for e, is_first in zip(valid, first) if is_first]
            duplicates = len(valid) - len(fresh)

    records = [RejectedEvent.build(event, reasons, key=gw.audit_key, received_at=received_at,
                                   gateway_id=options.gateway_id, request_id=request_id)
               for _, event, reasons in rejected]
    if not gw.dark:
        client_ip = _client_ip(request, options.trust_forwarded_for)
        user_agent = request.headers.get("user-agent")
        raw_topic, rejected_topic = settings.kafka_topic_raw, settings.kafka_topic_rejected
        version = registry.version
        messages = []
        for event in fresh:
            record = RawRecord(event=event, received_at=received_at, gateway_id=options.gateway_id,
                               source="native", sent_at=batch.sent_at, client_ip=client_ip,
                               user_agent=user_agent, schema_version=version(event["event"]))
            messages.append(Message(raw_topic, record.key, record.encode(), record.headers()))
        for r in records:
            messages.append(Message(rejected_topic, (r.event_id or "").encode() or None, r.encode(), r.headers()))
        fresh_ids = [e["event_id"] for e in fresh]
        try:
            route = await gw.publisher.publish(messages)
        except SpoolFull as exc:
            await _release(gw, fresh_ids)
            metrics.backpressure.labels("spool_full").inc()
            raise RequestRefused(503, "unavailable", f"Kafka is unavailable and the spool is full ({exc})",
                                 options.retry_after_seconds) from None
        except BaseException:
            await _release(gw, fresh_ids)
            raise
        if route == "spool":
            metrics.spooled.inc()
        if fresh_ids:
            try:
                await gw.dedup.confirm(fresh_ids)
            except RedisError:
                metrics.dependency_errors.labels("redis").inc()

    if records:
        try:
            await gw.audit.record(records)
        except Exception as exc:  # the rejected topic still has them; the request itself is fine
            metrics.dependency_errors.labels("sql").inc()
            log.error("could not write %d rejection(s) to the audit table: %s", len(records), exc)

    accepted = 0 if gw.dark else len(fresh)
    metrics.count("accepted", accepted)
    metrics.count("dark", len(fresh) if gw.dark else 0)
    metrics.count("duplicate", duplicates)
    metrics.count("no_consent", no_consent)
    metrics.count("rejected", len(rejected))
    answer: dict[str, Any] = {
        "accepted": accepted, "duplicates": duplicates, "no_consent": no_consent,
        "rejected": [{"index": i, "event_id": r.event_id, "errors": reasons}
                     for (i, _, reasons), r in zip(rejected, records)],
    }
    if gw.dark:
        answer["dark"] = len(fresh)
    log.info("collect", extra={"events": len(events), "accepted": accepted, "rejected": len(rejected),
                               "duplicates": duplicates, "no_consent": no_consent, "device": device,
                               "dark": gw.dark})
    return Response(orjson.dumps(answer), 200, media_type="application/json")


async def _release(gw: Gateway, event_ids: list[str]) -> None:
    try:
        await gw.dedup.release(event_ids)
    except RedisError:
        gw.metrics.dependency_errors.labels("redis").inc()
