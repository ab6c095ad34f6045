"""What the flow does to each record, in plain Python (no Bytewax here, so every step is testable alone).

Two steps, both run by the flow's one processing operator for each batch the source hands over:

1. :meth:`Stages.admit`, per record: decode the wire record → validate with the registry → correct the clock →
   PII (hash/drop/strip IPs) → geo from the raw IP. The raw IP exists only inside this call: what leaves it is
   already PII-free.
2. :meth:`Stages.finish`, per batch: plan tiers in one look-up, user agent, and the output row (the partial row is
   filled in place: it is built in column order for that).

Anything wrong with a record becomes a :class:`DeadLetter` (stage, reasons, source coordinates, the original
bytes for replay); neither method raises because of an event.
"""
from __future__ import annotations

import base64
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from enrichers.context import (EventTime, correct_timestamp, parse_time, user_agent_cache_stats,
                               user_agent_info)
from enrichers.geo import GeoEnricher
from enrichers.metrics import CacheCounter
from enrichers.pii import MissingSaltError, PiiHasher, mask_ip
from enrichers.plan_tier import PlanTierLookup
from flows.metrics import STAGES
from schemas.wire import WireError, decode_raw

log = logging.getLogger(__name__)
DEAD_LETTER_VERSION = 1

#: Output columns, in order. Sinks type them: timestamps are aware UTC datetimes, event_date a date,
#: properties/context/consent JSON text (hashed, IP-free).
ROW_COLUMNS = (
    "event_id", "event", "event_date", "timestamp", "received_at", "user_id", "anonymous_id", "device_id",
    "pii_salt_id", "pii_salt_id_prev", "country", "region", "city", "latitude", "longitude", "time_zone",
    "ip_truncated", "plan_tier", "browser", "os", "device_class", "properties", "context", "consent",
    "source", "schema_version", "clock_skew_seconds", "kafka_topic", "kafka_partition", "kafka_offset",
)

#: Where a partial row carries the gateway's user agent until finish() has used it (never an output column).
_GATEWAY_UA = "_gateway_user_agent"
_AGENT_MEMO_SIZE = 10_000


@dataclass
class DeadLetter:
    """A record the flow could not turn into a row; goes to ``analytics.events.invalid``.

    :param stage: where it failed: decode, validate, time, pii or enrich
    :param reasons: ``[{"path": …, "message": …}]``, PII-safe (the registry never quotes marked values)
    :param original: the raw record's bytes, for replay; ``None`` when the failure came after PII was applied
    """

    stage: str
    reasons: list[dict[str, str]]
    topic: str | None
    partition: int | None
    offset: int | None
    key: bytes | None
    original: bytes | None
    event_id: str | None = None
    event: str | None = None
    failed_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat())

    def encode(self) -> bytes:
        return orjson.dumps({
            "v": DEAD_LETTER_VERSION, "stage": self.stage, "reasons": self.reasons,
            "event_id": self.event_id, "event": self.event,
            "source_topic": self.topic, "source_partition": self.partition, "source_offset": self.offset,
            "failed_at": self.failed_at,
            "original_key_b64": base64.b64encode(self.key).decode() if self.key is not None else None,
            "original_b64": base64.b64encode(self.original).decode() if self.original is not None else None,
        })


def decode_dead_letter(value: bytes) -> dict[str, Any]:
    """A dead letter as a dict, with ``original`` and ``original_key`` decoded back to bytes (or ``None``)."""
    doc = orjson.loads(value)
    doc["original"] = base64.b64decode(doc["original_b64"]) if doc.get("original_b64") else None
    doc["original_key"] = base64.b64decode(doc["original_key_b64"]) if doc.get("original_key_b64") else None
    return doc


def _reason(path: str, message: str) -> dict[str, str]:
    return {"path": path, "message": message}


class Stages:
    """The flow's per-record and per-batch work, with the enrichers it needs.

    :param registry: a ``SchemaRegistry``
    :param pii: the PII hasher
    :param geo: the geo enricher
    :param plan_tiers: the plan-tier look-up
    :param ip_handling: ``truncate`` keeps the /24 or /48 network in ``ip_truncated``; ``drop`` keeps nothing
    :param max_skew: the largest clock correction applied
    """

    def __init__(self, registry: Any, pii: PiiHasher, geo: GeoEnricher, plan_tiers: PlanTierLookup,
                 ip_handling: str = "truncate", max_skew: dt.timedelta = dt.timedelta(days=2)):
        self.registry = registry
        self.pii = pii
        self.geo = geo
        self.plan_tiers = plan_tiers
        self.keep_truncated_ip = ip_handling == "truncate"
        self.max_skew = max_skew
        self._ua_metrics = CacheCounter("user_agent")
        self._agents: dict[tuple, Any] = {}

    @classmethod
    def from_settings(cls, settings: Any, registry: Any, **plan_tier_options: Any) -> Stages:
        plan_tier_options.setdefault("table", settings.plan_tier_table)
        plan_tier_options.setdefault("ttl_seconds", settings.plan_tier_ttl_seconds)
        return cls(registry, PiiHasher.from_settings(settings, registry),
                   GeoEnricher.from_settings(settings, cache_size=settings.geoip_cache_size),
                   PlanTierLookup.from_settings(settings, **plan_tier_options), settings.ip_handling,
                   max_skew=dt.timedelta(seconds=settings.clock_skew_max_seconds))

    # --- step 1: per record ----------------------------------------------------------------
    def admit(self, msg: Any) -> dict[str, Any] | DeadLetter:
        """One consumed message (``.value``, ``.key``, ``.topic``, ``.partition``, ``.offset``) → a PII-free
        partial row (the output row's columns in order, enrichment columns still empty, plus the gateway's
        user agent at the end for :meth:`finish`), or a dead letter. The caller counts records in
        (``analytics_flow_events{stage="source",result="in"}``) per batch: a labelled counter costs microseconds."""
        where = (getattr(msg, "topic", None), getattr(msg, "partition", None), getattr(msg, "offset", None))

        def dead(stage: str, reasons: list[dict[str, str]], event: dict | None = None) -> DeadLetter:
            STAGES.inc(stage, "invalid")
            event_id = event.get("event_id") if isinstance(event, dict) else None
            name = event.get("event") if isinstance(event, dict) else None
            log.debug("dead letter: stage=%s at %s/%s/%s, %d reason(s)", stage, *where, len(reasons))
            return DeadLetter(stage, reasons, *where, key=msg.key, original=msg.value,
                              event_id=event_id if isinstance(event_id, str) else None,
                              event=name if isinstance(name, str) else None)

        try:
            record = decode_raw(msg.value)
        except WireError as exc:
            return dead("decode", [_reason("", str(exc))])
        event = record.event
        issues = self.registry.validate(event)
        if issues:
            return dead("validate", [_reason(i.path, i.message) for i in issues], event)
        # event_time() spelled out, so that the parsed receive time serves the row as well
        timestamp, received = parse_time(event.get("timestamp")), parse_time(record.received_at)
        if timestamp is None or received is None:
            return dead("time", [_reason("received_at", "gateway receive time is not an RFC 3339 timestamp")],
                        event)
        sent = parse_time(event.get("sent_at")) or parse_time(record.sent_at)
        when = correct_timestamp(timestamp, sent, received, self.max_skew)
        try:
            protected = self.pii.protect(event, when.event_date, record.client_ip)
        except MissingSaltError as exc:
            return dead("pii", [_reason("timestamp", str(exc))], event)
        geo = self.geo.columns(protected.ips)
        masked = None
        if self.keep_truncated_ip and protected.ip:
            masked = mask_ip(protected.ip)
        return self._partial(protected.event, record, when, received, protected.salt_id, protected.salt_id_prev,
                             geo, masked, where)

    def _partial(self, event: dict[str, Any], record: Any, when: EventTime, received: dt.datetime, salt_id: str,
                 salt_id_prev: str | None, geo: dict[str, Any], masked: str | None,
                 where: tuple[Any, Any, Any]) -> dict[str, Any]:
        name = event["event"]
        # Laid out in ROW_COLUMNS order, so finish() fills it in place instead of building a second dict.
        return {
            "event_id": event["event_id"], "event": name, "event_date": when.event_date,
            "timestamp": when.timestamp, "received_at": received,
            "user_id": event.get("user_id"), "anonymous_id": event.get("anonymous_id"),
            "device_id": event.get("device_id"), "pii_salt_id": salt_id, "pii_salt_id_prev": salt_id_prev,
            **geo, "ip_truncated": masked, "plan_tier": None, "browser": None, "os": None, "device_class": None,
            "properties": event.get("properties") or {}, "context": event.get("context") or {},
            "consent": event.get("consent"), "source": record.source,
            "schema_version": self.registry.version(name) if name in self.registry else None,
            "clock_skew_seconds": when.skew_seconds,
            "kafka_topic": where[0], "kafka_partition": where[1], "kafka_offset": where[2],
            _GATEWAY_UA: record.user_agent,
        }

    # --- step 2: per batch -------------------------------------------------------------------
    def finish(self, partials: Iterable[dict[str, Any]]) -> list[dict[str, Any] | DeadLetter]:
        """Partial rows of one batch → output rows (one plan-tier query for the batch's cache misses)."""
        partials = list(partials)
        # Counted per batch, not per event: a labelled counter costs microseconds, which add up at this rate.
        STAGES.inc("admit", "ok", len(partials))
        tiers = self.plan_tiers.lookup_many(p["user_id"] for p in partials)
        out: list[dict[str, Any] | DeadLetter] = []
        for partial in partials:
            try:
                out.append(self._row(partial, tiers))
            except Exception as exc:  # a bug, not a bad event; the event still goes somewhere visible
                STAGES.inc("enrich", "failed")
                log.error("could not build the row at %s/%s/%s: %s", partial.get("kafka_topic"),
                          partial.get("kafka_partition"), partial.get("kafka_offset"), type(exc).__name__)
                out.append(DeadLetter("enrich", [_reason("", f"row could not be built ({type(exc).__name__})")],
                                      partial.get("kafka_topic"), partial.get("kafka_partition"),
                                      partial.get("kafka_offset"), key=None, original=None,
                                      event_id=partial.get("event_id"), event=partial.get("event")))
        STAGES.inc("enrich", "out", len(out))
        self.geo.publish_metrics()
        self._ua_metrics.publish_totals(*user_agent_cache_stats())
        return out

    def _user_agent(self, context: dict[str, Any], gateway_user_agent: str | None) -> Any:
        # user_agent_info() reads only these three values; a device sends the same ones with every event.
        device = context.get("device")
        key = (context.get("user_agent"), gateway_user_agent,
               (device.get("type"), device.get("os")) if isinstance(device, dict) else None)
        try:
            return self._agents[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable value where a string belongs: skip the memo
            return user_agent_info({"context": context}, gateway_user_agent)
        agent = user_agent_info({"context": context}, gateway_user_agent)
        if len(self._agents) >= _AGENT_MEMO_SIZE:
            self._agents.clear()
        self._agents[key] = agent
        return agent

    def _row(self, partial: dict[str, Any], tiers: dict[str | None, str]) -> dict[str, Any]:
        # The partial is this flow's own (nothing else holds it), so it becomes the row in place.
        row = partial
        context = row["context"]
        if "ip" in context:  # already removed by the PII step; checked here so the column is IP-free regardless
            context = {k: v for k, v in context.items() if k != "ip"}
        agent = self._user_agent(context, row.pop(_GATEWAY_UA))
        consent = row["consent"]
        row["plan_tier"] = tiers.get(row["user_id"], "unknown")
        row["browser"], row["os"], row["device_class"] = agent.browser, agent.os, agent.device_class
        row["properties"] = orjson.dumps(row["properties"]).decode()
        row["context"] = orjson.dumps(context).decode()
        row["consent"] = orjson.dumps(consent).decode() if consent is not None else None
        return row
