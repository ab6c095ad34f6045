"""Rejected events as data: an ``AnalyticsEventRejected`` record per event the gateway refused.

A record holds the event id, the event name, the reasons, the receive time and a salted hash of the payload
(HMAC-SHA256 under a per-deployment key, over the event's canonical JSON), never the payload itself: the
hash lets an operator match a client's own copy of an event to its rejection without the gateway keeping
personal data. The id and name are kept only when they have the shape of an id and a name, so a client that
puts something else there does not smuggle it into the audit log. Records go to the audit table (PostgreSQL,
or SQLite when embedded) and to the ``analytics.events.rejected`` topic.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

import orjson

from ingest_gateway.sqlstore import SqlStore

TABLE = "analytics_rejected_events"
RECORD_TYPE = "AnalyticsEventRejected"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")

# One column list, two dialects: (name, PostgreSQL type, SQLite type). Reasons are JSON either way.
_COLUMNS = (
    ("event_id", "TEXT", "TEXT"),
    ("event_name", "TEXT", "TEXT"),
    ("reasons", "JSONB NOT NULL", "TEXT NOT NULL"),
    ("received_at", "TIMESTAMPTZ NOT NULL", "TEXT NOT NULL"),
    ("payload_hash", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("gateway_id", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("request_id", "TEXT", "TEXT"),
    ("source", "TEXT NOT NULL", "TEXT NOT NULL"),
)


def _ddl(dialect: str) -> list[str]:
    key = "BIGSERIAL PRIMARY KEY" if dialect == "postgres" else "INTEGER PRIMARY KEY AUTOINCREMENT"
    kind = 1 if dialect == "postgres" else 2
    columns = ",\n    ".join([f"id {key}"] + [f"{c[0]} {c[kind]}" for c in _COLUMNS])
    return [f"CREATE TABLE IF NOT EXISTS {TABLE} (\n    {columns})",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_received_at ON {TABLE} (received_at)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_event_id ON {TABLE} (event_id)"]


_DDL = {dialect: _ddl(dialect) for dialect in ("postgres", "sqlite")}


def payload_hash(key: bytes, event: Any) -> str:
    """HMAC-SHA256 of the event's canonical JSON (sorted keys), hex."""
    try:
        canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        canonical = repr(event).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _shaped(value: Any, pattern: re.Pattern[str]) -> str | None:
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


@dataclass(frozen=True)
class RejectedEvent:
    event_id: str | None
    event_name: str | None
    reasons: list[str]
    received_at: str
    payload_hash: str
    gateway_id: str
    request_id: str | None
    source: str = "native"

    @classmethod
    def build(cls, event: Any, reasons: list[str], *, key: bytes, received_at: str, gateway_id: str,
              request_id: str | None, source: str = "native", payload: Any = None) -> "RejectedEvent":
        """:param payload: what the client sent, when ``event`` is a translation of it (hashed instead)"""
        fields = event if isinstance(event, dict) else {}
        hashed = event if payload is None else payload
        return cls(event_id=_shaped(fields.get("event_id"), _UUID), event_name=_shaped(fields.get("event"), _NAME),
                   reasons=reasons, received_at=received_at, payload_hash=payload_hash(key, hashed),
                   gateway_id=gateway_id, request_id=request_id, source=source)

    def encode(self) -> bytes:
        """The record on ``analytics.events.rejected``."""
        return orjson.dumps({"type": RECORD_TYPE, "v": 1, "event_id": self.event_id, "event": self.event_name,
                             "reasons": self.reasons, "received_at": self.received_at,
                             "payload_hash": self.payload_hash, "gateway_id": self.gateway_id,
                             "request_id": self.request_id, "source": self.source})

    def headers(self) -> list[tuple[str, bytes]]:
        return [("hw-record", RECORD_TYPE.encode()), ("hw-event", (self.event_name or "").encode()),
                ("hw-event-id", (self.event_id or "").encode())]


class AuditLog:
    """Writes rejection records to the audit table. :param store: the gateway's SQL store"""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    def setup(self) -> None:
        self._store.script(_DDL[self._store.dialect])

    def write(self, records: list[RejectedEvent]) -> None:
        if not records:
            return
        self._store.executemany(
            f"INSERT INTO {TABLE} (event_id, event_name, reasons, received_at, payload_hash, gateway_id,"
            f" request_id, source) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [(r.event_id, r.event_name, orjson.dumps(r.reasons).decode(), r.received_at, r.payload_hash,
              r.gateway_id, r.request_id, r.source) for r in records])

    async def record(self, records: list[RejectedEvent]) -> None:
        if records:
            await self._store.run(self.write, records)
