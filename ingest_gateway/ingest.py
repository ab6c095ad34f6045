"""What every ingest endpoint does with a batch once its body is parsed: the one path to Kafka.

Per event: refusals found earlier (size, mapping) → consent → opt-out → schema → signing device; then
one round trip to the key store for the signature's replay check and the event-id dedup → publish (Kafka or spool) → audit of rejections → metrics. The native endpoint
(:mod:`ingest_gateway.collect`) and the Segment-compatible one (:mod:`ingest_gateway.segment`) differ only
in how they read and authenticate a request and how they phrase the answer; both end here.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, TypeVar

import orjson
from redis.exceptions import RedisError
from starlette.requests import HTTPConnection
from starlette.responses import Response

from ingest_gateway.answer import Answer
from ingest_gateway.audit import RejectedEvent
from ingest_gateway.dedup import Replayed
from ingest_gateway.gateway import Gateway
from ingest_gateway.logs import request_id_var
from ingest_gateway.producer import Message, SpoolFull
from ingest_gateway.signing import replayed_error
from schemas.wire import RawRecord

log = logging.getLogger("headwater.gateway.ingest")
_new_tuple = tuple.__new__
_REPLAYED = (replayed_error().code, replayed_error().message)


class RequestRefused(Exception):
    """The whole request is refused with ``status`` and a machine-readable ``code``."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after
        super().__init__(f"{code}: {message}")


AnyAnswer = TypeVar("AnyAnswer", Response, Answer)
ErrorAnswer = Callable[[int, str, str, str, "int | None"], AnyAnswer]


async def guarded(gw: Gateway, request: HTTPConnection, route: str,
                  handle: Callable[[str], Awaitable[AnyAnswer]], error: ErrorAnswer) -> AnyAnswer:
    """What every ingest endpoint wraps its work in: a request id (also in the logs), the in-flight bound
    (429 + Retry-After instead of unbounded memory), refusals turned into the endpoint's own error shape,
    and the latency and status metrics.

    :param route: the metrics label
    :param handle: does the work, given the request id
    :param error: builds the endpoint's error answer ``(status, code, message, request_id, retry_after)``
    """
    request_id = request.headers.get("x-request-id") or gw.new_request_id()
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        if gw.inflight >= gw.options.max_inflight_requests:
            gw.metrics.backpressure.labels("inflight").inc()
            response = error(429, "overloaded", "too many requests in flight; retry later", request_id,
                             gw.options.retry_after_seconds)
        else:
            gw.inflight += 1
            gw.metrics.inflight.inc()
            try:
                response = await handle(request_id)
            except RequestRefused as exc:
                response = error(exc.status, exc.code, exc.message, request_id, exc.retry_after)
            finally:
                gw.inflight -= 1
                gw.metrics.inflight.dec()
        status = response.status_code
        response.headers["X-Request-ID"] = request_id
        return response
    finally:
        gw.metrics.request_done(route, status, time.perf_counter() - started)
        request_id_var.reset(token)


@dataclass
class Outcome:
    """What happened to a batch. ``rejected`` holds ``(index, event_id, reasons)`` in request order."""

    accepted: int = 0
    duplicates: int = 0
    no_consent: int = 0
    dark: int = 0
    dark_mode: bool = False
    rejected: list[tuple[int, str | None, list[str]]] = field(default_factory=list)


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def client_ip(request: HTTPConnection, trust_forwarded: bool) -> str | None:
    if trust_forwarded:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            return forwarded.split(",", 1)[0].strip() or None
    return request.client.host if request.client else None


def _format_issues(issues) -> list[str]:
    return [f"{i.path}: {i.message}" if i.path else f"(event): {i.message}" for i in issues]


async def ingest(gw: Gateway, request: HTTPConnection, request_id: str, events: list[Any], *, source: str,
                 received_at: str, sent_at: str | None, consent: bool = True,
                 refused: dict[int, list[str]] | None = None, payloads: list[Any] | None = None,
                 device: str | None = None, signature: str | None = None,
                 encoded: list[bytes] | None = None, contexts_ok: list[bool | None] | None = None) -> Outcome:
    """Validate, de-duplicate, publish and audit one batch.

    :param events: the events in our envelope (still unvalidated JSON values)
    :param source: ``native`` or ``segment``, written into each raw record and audit record
    :param consent: False when the whole batch lacks analytics consent (every event counts ``no_consent``)
    :param refused: index -> reasons for events refused before validation (too large, not mappable)
    :param payloads: what the client sent for each event, when it differs from ``events`` (the audit hash
        is computed over it, so an operator can match the client's own copy)
    :param device, signature: the signing device of a signed request; its events must carry that device
    :param encoded: each event's JSON text when the caller already has it (see
        :func:`ingest_gateway.body.encoded_events`); the raw records embed it instead of serializing again
    :param contexts_ok: from a batch of :func:`ingest_gateway.body.split_batch` (``encoded`` then holds its texts):
        per event, ``None`` when its ``context`` was decoded with it (or it has none), else the verdict on its
        context, whose decoded value is ``None``. Such an event is decoded whole again only to explain or audit it.
    :raises RequestRefused: 401 for a replayed signature, 503 when neither Kafka nor the spool can take the
        batch or a signed request cannot be checked for replay
    """
    options, metrics, registry = gw.options, gw.metrics, gw.registry
    dark = gw.dark
    outcome = Outcome(dark_mode=dark)
    valid: list[dict[str, Any]] = []
    valid_texts: list[bytes] | None = [] if encoded is not None else None
    rejected: list[tuple[int, Any, list[str]]] = []
    failed_schemas: list[str] = []
    if not consent:
        outcome.no_consent = len(events)
    else:
        optouts = gw.optouts
        blocks = optouts.blocks if len(optouts) else None  # nobody has opted out: nothing to look up per event
        validate = registry.validate_json  # orjson-decoded (or mapped) events: plain JSON values
        check_rest = registry.check_rest
        check_device = device is not None and signature is not None
        for index, event in enumerate(events):
            context_ok = contexts_ok[index] if contexts_ok is not None else None
            if refused and index in refused:
                rejected.append((index, _whole(event, context_ok, encoded, index), refused[index]))
                continue
            if type(event) is dict:
                # the event's own consent says no to analytics, or a subject of it has opted out
                own = event.get("consent")
                if (type(own) is dict and own.get("analytics") is False) or (blocks is not None and blocks(event)):
                    outcome.no_consent += 1
                    continue
            if context_ok is None:
                issues = validate(event)
            elif context_ok and check_rest(event):
                issues = None
            else:  # not shown valid without its context: decoded whole, and checked (and explained) as such
                event = _whole(event, context_ok, encoded, index)
                issues = validate(event)
            if issues:
                name = event.get("event") if type(event) is dict else None
                failed_schemas.append(name if name in registry else "unknown")
                rejected.append((index, event, _format_issues(issues)))
                continue
            if check_device and event.get("device_id", device) != device:
                rejected.append((index, _whole(event, context_ok, encoded, index),
                                 ["device_id: does not match the signing device (X-Headwater-Device)"]))
                continue
            valid.append(event)
            if valid_texts is not None:
                valid_texts.append(encoded[index])

    first = await _admit(gw, [] if dark else [e["event_id"] for e in valid], signature)  # dark mode claims nothing
    fresh, fresh_texts = valid, valid_texts
    if not all(first):
        fresh = [e for e, is_first in zip(valid, first) if is_first]
        if valid_texts is not None:
            fresh_texts = [t for t, is_first in zip(valid_texts, first) if is_first]
        outcome.duplicates = len(valid) - len(fresh)
    for name in failed_schemas:  # counted once the request is known not to be a replay
        metrics.schema_failures.labels(name).inc()

    records = [RejectedEvent.build(event, reasons, key=gw.audit_key, received_at=received_at,
                                   gateway_id=options.gateway_id, request_id=request_id, source=source,
                                   payload=payloads[index] if payloads is not None else event)
               for index, event, reasons in rejected]
    if not dark:
        await _publish(gw, request, fresh, fresh_texts, records, source=source, received_at=received_at,
                       sent_at=sent_at)

    if records:
        try:
            await gw.audit.record(records)
        except Exception as exc:  # the rejected topic still has them; the request itself is fine
            metrics.dependency_errors.labels("sql").inc()
            log.error("could not write %d rejection(s) to the audit table: %s", len(records), exc)

    outcome.accepted = 0 if dark else len(fresh)
    outcome.dark = len(fresh) if dark else 0
    outcome.rejected = [(i, r.event_id, reasons) for (i, _, reasons), r in zip(rejected, records)]
    metrics.count("accepted", outcome.accepted)
    metrics.count("dark", outcome.dark)
    metrics.count("duplicate", outcome.duplicates)
    metrics.count("no_consent", outcome.no_consent)
    metrics.count("rejected", len(rejected))
    if log.isEnabledFor(logging.INFO):
        log.info("ingest", extra={"source": source, "events": len(events), "accepted": outcome.accepted,
                                  "rejected": len(rejected), "duplicates": outcome.duplicates,
                                  "no_consent": outcome.no_consent, "device": device, "dark": dark})
    return outcome


def _whole(event: Any, context_ok: bool | None, texts: list[bytes] | None, index: int) -> Any:
    """The event with its context, decoding its text again where the context was left out (``context_ok`` set)."""
    if context_ok is None or texts is None:
        return event
    return orjson.loads(texts[index])


async def _admit(gw: Gateway, event_ids: list[str], signature: str | None) -> list[bool]:
    """The request's one trip to the key store: its replay check (signed requests) and the claim of its
    event ids. :returns: for each id, whether it is seen for the first time. :raises RequestRefused: 401 for
    a replay, 503 when a signed request cannot be checked for replay."""
    if not event_ids and signature is None:
        return []
    once_key, once_ttl = gw.verifier.replay_key(signature) if signature is not None else (None, 0)
    try:
        return await gw.dedup.admit(event_ids, once_key, once_ttl)
    except Replayed:
        raise RequestRefused(401, *_REPLAYED) from None
    except RedisError as exc:
        gw.metrics.dependency_errors.labels("redis").inc()
        if signature is not None:  # replay protection cannot be skipped
            raise RequestRefused(503, "dependency_unavailable", f"replay store unavailable: {exc}",
                                 gw.options.retry_after_seconds) from None
        # fail open: downstream sinks are idempotent on event_id
        log.warning("event-id dedup unavailable, accepting without it: %s", exc)
        return [True] * len(event_ids)


def raw_messages(topic: str, events: list[dict[str, Any]], schema_version: Callable[[str], int],
                 common: RawRecord, texts: list[bytes] | None = None) -> list[Message]:
    """The raw-topic messages of a request's accepted events: for each, exactly what
    ``RawRecord(event, **common fields, schema_version)`` gives as key, value and headers.

    Everything but the event is the same for the whole request, so the record's outer object is built once
    and only its ``event`` swapped: one ``orjson.dumps`` per event and no per-event record object. The
    field order is ``RawRecord.encode``'s, so the bytes are the same (a unit test holds the two together).

    :param common: a record carrying the request's fields (its ``event`` and ``schema_version`` are ignored)
    :param texts: each event's own JSON text, when already made: the value is then that text spliced into
        the outer object's (``event`` is its last field), byte for byte what serializing the whole gives
    """
    shell = replace(common, event={}).encode()
    if texts is not None and not shell.endswith(b'"event":{}}'):
        raise RuntimeError("RawRecord.encode no longer writes the event last: splicing texts would be wrong")
    head = shell[: -len(b"{}}")]
    outer = orjson.loads(shell)
    dumps = orjson.dumps
    make = _new_tuple  # Message(...) would run the named tuple's Python-level __new__ for each event
    per_name: dict[str, tuple[bytes, bytes]] = {}  # event name -> (its header value, its schema version)
    messages = []
    for index, event in enumerate(events):
        get = event.get
        name = get("event", "")
        known = per_name.get(name)
        if known is None:
            known = per_name[name] = (str(name).encode(), str(schema_version(name)).encode())
        subject = get("user_id") or get("anonymous_id") or get("device_id") or get("event_id") or ""
        if texts is not None:
            value = head + texts[index] + b"}"
        else:
            outer["event"] = event
            value = dumps(outer)
        messages.append(make(Message, (topic, str(subject).encode(), value,
                                       {"hw-event": known[0], "hw-event-id": str(get("event_id", "")).encode(),
                                        "hw-schema-version": known[1]})))
    return messages


async def _publish(gw: Gateway, request: HTTPConnection, fresh: list[dict[str, Any]], fresh_texts: list[bytes] | None,
                   records: list[RejectedEvent], *, source: str, received_at: str, sent_at: str | None) -> None:
    settings, options, metrics = gw.settings, gw.options, gw.metrics
    ip = client_ip(request, options.trust_forwarded_for)
    user_agent = request.headers.get("user-agent")
    raw_topic, rejected_topic = settings.kafka_topic_raw, settings.kafka_topic_rejected
    messages = raw_messages(raw_topic, fresh, gw.registry.version, RawRecord(
        event={}, received_at=received_at, gateway_id=options.gateway_id, source=source, sent_at=sent_at,
        client_ip=ip, user_agent=user_agent), fresh_texts)
    for r in records:
        messages.append(Message(rejected_topic, (r.event_id or "").encode() or None, r.encode(), dict(r.headers())))
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
    if fresh_ids:  # written with a later admission (its failures are counted there)
        await gw.dedup.confirm(fresh_ids)


async def _release(gw: Gateway, event_ids: list[str]) -> None:
    try:
        await gw.dedup.release(event_ids)
    except RedisError:
        gw.metrics.dependency_errors.labels("redis").inc()
