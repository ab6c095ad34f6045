"""What the flow does to each record, in plain Python (no Bytewax here, so every step is testable alone).

Two steps, both run by the flow's one processing operator for each batch the source hands over:

1. :meth:`Stages.admit`, per record: decode the wire record → validate with the registry → correct the clock →
   PII (hash/drop/strip IPs) → geo from the raw IP → user agent → the output row, complete but for its plan tier.
   The raw IP exists only inside this call: what leaves it is already PII-free.
2. :meth:`Stages.finish`, per batch: plan tiers in one look-up, written into the rows.

Anything wrong with a record becomes a :class:`DeadLetter` (stage, reasons, source coordinates, the original
bytes for replay); neither method raises because of an event.

The flow spends most of its time here, tens of thousands of times a second, so :meth:`Stages.admit` is written
for speed: one function with the steps inlined, no intermediate objects per event beyond the row itself, and small
memos for what repeats from event to event (a gateway batch's receive and send times, a client's address, a
device's user agent).
"""
from __future__ import annotations

import base64
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from enrichers.context import parse_time, user_agent_cache_stats, user_agent_info
from enrichers.geo import GeoEnricher
from enrichers.metrics import CacheCounter
from enrichers.pii import MissingSaltError, PiiHasher, mask_ip
from enrichers.plan_tier import UNKNOWN, PlanTierLookup
from flows.contexts import ContextMemo, context_text
from flows.metrics import STAGES
from flows.sealing import LetterSeal
from schemas.wire import WireError, decode_raw_object

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

_from_iso = dt.datetime.fromisoformat
_UTC = dt.timezone.utc

#: Entries of each per-process memo (user agents, parsed times, masked addresses) before it starts afresh.
_MEMO_SIZE = 10_000


@dataclass
class DeadLetter:
    """A record the flow could not turn into a row; goes to ``analytics.events.invalid``.

    :param stage: where it failed: decode, validate, time, pii or enrich
    :param reasons: ``[{"path": …, "message": …}]``, PII-safe (the registry never quotes marked values)
    :param original: the raw record's bytes, for replay; ``None`` when the failure came after PII was applied
    :param seal: a :class:`flows.sealing.LetterSeal`: when set, :meth:`encode` writes ``original`` encrypted,
        never in clear (the flow always sets it; ``None`` writes it base64-encoded only)
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
    seal: Any = field(default=None, repr=False, compare=False)

    def encode(self) -> bytes:
        plain = sealed = seal_key = None
        if self.original is not None:
            if self.seal is not None:
                seal_key, sealed_bytes = self.seal.seal(self.original)
                sealed = base64.b64encode(sealed_bytes).decode()
            else:
                plain = base64.b64encode(self.original).decode()
        return orjson.dumps({
            "v": DEAD_LETTER_VERSION, "stage": self.stage, "reasons": self.reasons,
            "event_id": self.event_id, "event": self.event,
            "source_topic": self.topic, "source_partition": self.partition, "source_offset": self.offset,
            "failed_at": self.failed_at,
            "original_key_b64": base64.b64encode(self.key).decode() if self.key is not None else None,
            "original_b64": plain, "original_sealed_b64": sealed, "original_seal_key": seal_key,
        })


def decode_dead_letter(value: bytes, seal: Any = None) -> dict[str, Any]:
    """A dead letter as a dict, with ``original`` and ``original_key`` decoded back to bytes (or ``None``).

    ``sealed`` tells whether the original was written encrypted; it is opened when ``seal`` (a
    :class:`flows.sealing.LetterSeal`) is given, and ``original`` is ``None`` otherwise.

    :raises flows.sealing.SealError: when ``seal`` cannot open the original (its salt is gone, or it was altered)
    """
    doc = orjson.loads(value)
    doc["sealed"] = bool(doc.get("original_sealed_b64"))
    if doc["sealed"]:
        opened = None
        if seal is not None:
            opened = seal.open(str(doc.get("original_seal_key")), base64.b64decode(doc["original_sealed_b64"]))
        doc["original"] = opened
    else:
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
    :param seal: a :class:`flows.sealing.LetterSeal` for the dead letters' originals (``None``: written in clear)
    """

    def __init__(self, registry: Any, pii: PiiHasher, geo: GeoEnricher, plan_tiers: PlanTierLookup,
                 ip_handling: str = "truncate", max_skew: dt.timedelta = dt.timedelta(days=2), seal: Any = None):
        self.registry = registry
        self.seal = seal
        self.pii = pii
        self.geo = geo
        self.plan_tiers = plan_tiers
        self.keep_truncated_ip = ip_handling == "truncate"
        self.max_skew = max_skew
        self._ua_metrics = CacheCounter("user_agent")
        self._agents: dict[tuple, Any] = {}
        self._times: dict[str, dt.datetime | None] = {}
        self._masks: dict[str, str | None] = {}
        self._versions = {name: registry.version(name) for name in registry.events}
        #: Contexts remembered by their bytes (None where the C span finder is not built).
        self.contexts = ContextMemo(registry, pii) if ContextMemo.usable(registry) else None

    @classmethod
    def from_settings(cls, settings: Any, registry: Any, **plan_tier_options: Any) -> Stages:
        plan_tier_options.setdefault("table", settings.plan_tier_table)
        plan_tier_options.setdefault("ttl_seconds", settings.plan_tier_ttl_seconds)
        stages = cls(registry, PiiHasher.from_settings(settings, registry),
                     GeoEnricher.from_settings(settings, cache_size=settings.geoip_cache_size),
                     PlanTierLookup.from_settings(settings, **plan_tier_options), settings.ip_handling,
                     max_skew=dt.timedelta(seconds=settings.clock_skew_max_seconds),
                     seal=LetterSeal.from_settings(settings))
        # The user-agent rules load on first use, a fraction of a second: at start-up, not on the first batch.
        user_agent_info({"context": {}}, "Mozilla/5.0")
        return stages

    # --- step 1: per record ----------------------------------------------------------------
    def admit(self, msg: Any) -> dict[str, Any] | DeadLetter:
        """One consumed message (``.value``, ``.key``, ``.topic``, ``.partition``, ``.offset``) → its output row with
        ``plan_tier`` still empty (for :meth:`finish`), or a dead letter. The caller counts records in
        (``analytics_flow_events{stage="source",result="in"}``) per batch: a labelled counter costs microseconds."""
        known = self.contexts.split(msg.value) if self.contexts is not None else None
        if known is not None:  # a valid context the memo knows: only the rest of the record was decoded and checked
            doc, event, context_entry = known
        else:
            context_entry = None
            try:
                doc = decode_raw_object(msg.value)
            except WireError as exc:
                return self._dead(msg, "decode", [_reason("", str(exc))], None)
            event = doc["event"]
            issues = self.registry.validate_json(event)  # fresh from orjson.loads: plain JSON values
            if issues:
                return self._dead(msg, "validate", [_reason(i.path, i.message) for i in issues], event)

        # Clock: event_time() spelled out with memoised parsing (a gateway batch shares its receive and send times).
        times = self._times
        # The event's own time is nearly always new, so it is parsed without the memo. The validator has already
        # checked it is an RFC 3339 date-time; anything but the plain UTC form takes parse_time's full path.
        text = event["timestamp"]
        try:
            timestamp = _from_iso(text)
        except (TypeError, ValueError):
            timestamp = None
        if timestamp is None or timestamp.tzinfo is not _UTC or len(text) < 20:
            timestamp = parse_time(text)
        received_text = doc["received_at"]
        received = times.get(received_text) or self._time(received_text)
        if timestamp is None or received is None:
            return self._dead(msg, "time", [_reason("received_at", "gateway receive time is not an RFC 3339 "
                                                                   "timestamp")], event)
        sent = event.get("sent_at")
        if sent is None or (sent := times.get(sent) or self._time(sent)) is None:
            sent = doc.get("sent_at")
            if type(sent) is str:
                sent = times.get(sent) or self._time(sent)
            else:
                sent = None
        if sent is None:
            corrected = timestamp if timestamp <= received else received
        else:
            skew, max_skew = received - sent, self.max_skew
            if skew > max_skew:
                skew = max_skew
            elif skew < -max_skew:
                skew = -max_skew
            corrected = timestamp + skew
            if corrected > received:
                corrected = received
        event_date = corrected.date()

        derived = pair = None
        try:
            if context_entry is None:
                # In place: the event is this call's own, fresh from the wire, and only its protected form is used on.
                protected, ips, salt_id, salt_id_prev = self.pii.protect_parts(event, event_date, doc.get("client_ip"),
                                                                               in_place=True)
                context = context_json = None
            else:
                # The rest of the event (its context is None), then the remembered context: its addresses come
                # first, the gateway's last, as protect_parts orders them for the whole event.
                context, context_ips, context_json, salt_id, salt_id_prev = self.contexts.protected(context_entry,
                                                                                                     event_date)
                if event["event"] in self.contexts.unmarked:  # nothing outside the context to protect
                    protected, ips = event, []
                else:
                    protected, ips, salt_id, salt_id_prev = self.pii.protect_parts(event, event_date, in_place=True)
                client_ip = doc.get("client_ip")
                if not ips:  # the only addresses are the context's and the gateway's: geo and agent are remembered
                    pair = (client_ip, doc.get("user_agent"))
                    try:
                        derived = context_entry.derived.get(pair)
                    except TypeError:  # an unhashable value where a string belongs
                        pair = None
                ips.extend(context_ips)
                if client_ip:
                    ips.append(client_ip)
        except MissingSaltError as exc:
            return self._dead(msg, "pii", [_reason("timestamp", str(exc))], event)
        # From here on nothing of the event is raw: what goes wrong is a bug, and the letter carries no original.
        try:
            if pair is not None and derived is None:
                derived = self._derive(ips, context, doc)
                context_entry.remember(pair, derived)
            return self._row(protected, ips, doc, msg, event_date, corrected, received, timestamp, salt_id,
                             salt_id_prev, context, context_json, derived)
        except Exception as exc:
            STAGES.inc("enrich", "failed")
            log.error("could not build the row at %s/%s/%s: %s", msg.topic, msg.partition, msg.offset,
                      type(exc).__name__)
            name, event_id = event.get("event"), event.get("event_id")
            return DeadLetter("enrich", [_reason("", f"row could not be built ({type(exc).__name__})")],
                              msg.topic, msg.partition, msg.offset, key=None, original=None,
                              event_id=event_id if isinstance(event_id, str) else None,
                              event=name if isinstance(name, str) else None)

    def _derive(self, ips: list[str], context: dict[str, Any], doc: dict[str, Any]) -> tuple[Any, Any, Any]:
        """``(geo columns, truncated address, user agent info)`` of an event: from its raw addresses (best first), its
        PII-free context and the record's user agent."""
        geo = self.geo.values(ips)
        masked = None
        if ips and self.keep_truncated_ip:
            ip = ips[0]
            masked = self._masks.get(ip) if type(ip) is str else None
            if masked is None:
                masked = self._mask(ip)
        return geo, masked, self._user_agent(context, doc.get("user_agent"))

    def _row(self, event: dict[str, Any], ips: list[str], doc: dict[str, Any], msg: Any, event_date: dt.date,
             corrected: dt.datetime, received: dt.datetime, timestamp: dt.datetime, salt_id: str,
             salt_id_prev: str | None, context: dict[str, Any] | None = None,
             context_json: str | None = None, derived: tuple[Any, Any, Any] | None = None) -> dict[str, Any]:
        if context_json is None:
            context, context_json = context_text(event.get("context"))
        geo, masked, agent = derived if derived is not None else self._derive(ips, context, doc)
        consent = event.get("consent")
        name = event["event"]
        # In ROW_COLUMNS order; finish() fills in plan_tier.
        return {
            "event_id": event["event_id"], "event": name, "event_date": event_date, "timestamp": corrected,
            "received_at": received, "user_id": event.get("user_id"), "anonymous_id": event.get("anonymous_id"),
            "device_id": event.get("device_id"), "pii_salt_id": salt_id, "pii_salt_id_prev": salt_id_prev,
            "country": geo[0], "region": geo[1], "city": geo[2], "latitude": geo[3], "longitude": geo[4],
            "time_zone": geo[5], "ip_truncated": masked, "plan_tier": None,
            "browser": agent.browser, "os": agent.os, "device_class": agent.device_class,
            "properties": orjson.dumps(event.get("properties") or {}).decode(),
            "context": context_json,
            "consent": orjson.dumps(consent).decode() if consent is not None else None,
            "source": doc["source"], "schema_version": self._versions.get(name),
            "clock_skew_seconds": (corrected - timestamp).total_seconds(),
            "kafka_topic": msg.topic, "kafka_partition": msg.partition, "kafka_offset": msg.offset,
        }

    def _dead(self, msg: Any, stage: str, reasons: list[dict[str, str]], event: Any) -> DeadLetter:
        STAGES.inc(stage, "invalid")
        where = (getattr(msg, "topic", None), getattr(msg, "partition", None), getattr(msg, "offset", None))
        event_id = event.get("event_id") if isinstance(event, dict) else None
        name = event.get("event") if isinstance(event, dict) else None
        log.debug("dead letter: stage=%s at %s/%s/%s, %d reason(s)", stage, *where, len(reasons))
        return DeadLetter(stage, reasons, *where, key=msg.key, original=msg.value,
                          event_id=event_id if isinstance(event_id, str) else None,
                          event=name if isinstance(name, str) else None, seal=self.seal)

    def _time(self, text: Any) -> dt.datetime | None:
        """:func:`parse_time`, remembered (also when the text is not a time)."""
        parsed = parse_time(text)
        if type(text) is str:
            if len(self._times) >= _MEMO_SIZE:
                self._times.clear()
            self._times[text] = parsed
        return parsed

    def _mask(self, ip: Any) -> str | None:
        masked = mask_ip(ip)
        if type(ip) is str:
            if len(self._masks) >= _MEMO_SIZE:
                self._masks.clear()
            self._masks[ip] = masked
        return masked

    # --- step 2: per batch -------------------------------------------------------------------
    def finish(self, partials: Iterable[dict[str, Any]]) -> list[dict[str, Any] | DeadLetter]:
        """Rows of one batch from :meth:`admit` → output rows: their plan tiers in one look-up (one query for the
        batch's cache misses), written into the rows."""
        rows = list(partials)
        # Counted per batch, not per event: a labelled counter costs microseconds, which add up at this rate.
        STAGES.inc("admit", "ok", len(rows))
        tiers = self.plan_tiers.lookup_many([row["user_id"] for row in rows])
        for row in rows:
            row["plan_tier"] = tiers.get(row["user_id"], UNKNOWN)
        STAGES.inc("enrich", "out", len(rows))
        self.geo.publish_metrics()
        self._ua_metrics.publish_totals(*user_agent_cache_stats())
        return rows  # type: ignore[return-value]

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
        if len(self._agents) >= _MEMO_SIZE:
            self._agents.clear()
        self._agents[key] = agent
        return agent
