"""The record the gateway writes to ``analytics.events.raw`` and the flow reads: the one contract between them.

Value (JSON, UTF-8)::

    {"v": 1,
     "received_at": "2026-12-03T12:00:00.123456Z",   # gateway receive time (UTC); pipeline lag counts from it
     "sent_at": "2026-12-03T11:59:59.000Z" | null,    # the batch's sent_at as the client gave it
     "client_ip": "203.0.113.7" | null,               # raw IP, only for geo in the flow; never reaches a sink
     "user_agent": "..." | null,
     "gateway_id": "gw-7f3a",
     "source": "native" | "segment",
     "event": {...}}                                   # the event exactly as validated by the gateway

Key: ``user_id`` or else ``anonymous_id`` or else ``device_id`` (so one subject's events stay in order).
Headers: ``hw-event`` (name), ``hw-event-id``, ``hw-schema-version``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

WIRE_VERSION = 1
SOURCES = ("native", "segment")


class WireError(ValueError):
    """A raw record that cannot be decoded; the flow sends it to the dead-letter topic with this reason."""


@dataclass(frozen=True)
class RawRecord:
    """One accepted event with what the gateway knew when it accepted it."""

    event: dict[str, Any]
    received_at: str
    gateway_id: str
    source: str = "native"
    sent_at: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    schema_version: int | None = field(default=None, compare=False)

    @property
    def event_id(self) -> str | None:
        return self.event.get("event_id")

    @property
    def key(self) -> bytes:
        ev = self.event
        subject = ev.get("user_id") or ev.get("anonymous_id") or ev.get("device_id") or ev.get("event_id") or ""
        return str(subject).encode()

    def headers(self) -> list[tuple[str, bytes]]:
        out = [("hw-event", str(self.event.get("event", "")).encode()),
               ("hw-event-id", str(self.event.get("event_id", "")).encode())]
        if self.schema_version is not None:
            out.append(("hw-schema-version", str(self.schema_version).encode()))
        return out

    def encode(self) -> bytes:
        return orjson.dumps({
            "v": WIRE_VERSION, "received_at": self.received_at, "sent_at": self.sent_at,
            "client_ip": self.client_ip, "user_agent": self.user_agent, "gateway_id": self.gateway_id,
            "source": self.source, "event": self.event,
        })


def decode_raw_object(value: bytes | None) -> dict[str, Any]:
    """Parse a raw-topic value into its JSON object, after the same checks as :func:`decode_raw`.

    For readers that only need a few fields (the flow reads one record per event): no :class:`RawRecord` is built.
    On return ``event`` is a dict, ``received_at`` a string and ``source`` one of :data:`SOURCES` (filled in when
    absent); every other field is as the record has it.

    :raises WireError: with a specific reason, never anything else.
    """
    if not value:
        raise WireError("empty record")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"not JSON: {exc}") from None
    if type(doc) is not dict:  # orjson builds plain dicts only; the exact check is the cheap one
        raise WireError("record is not a JSON object")
    if doc.get("v") != WIRE_VERSION:
        raise WireError(f"unsupported wire version {doc.get('v')!r}")
    if type(doc.get("event")) is not dict:
        raise WireError("record has no event object")
    if type(doc.get("received_at")) is not str:
        raise WireError("record has no received_at")
    source = doc.setdefault("source", "native")
    if source not in SOURCES:
        raise WireError(f"unknown source {source!r}")
    return doc


def decode_raw(value: bytes | None) -> RawRecord:
    """Parse a raw-topic value. :raises WireError: with a specific reason, never anything else."""
    doc = decode_raw_object(value)
    return RawRecord(event=doc["event"], received_at=doc["received_at"], gateway_id=str(doc.get("gateway_id", "")),
                     source=doc["source"], sent_at=doc.get("sent_at"), client_ip=doc.get("client_ip"),
                     user_agent=doc.get("user_agent"))
