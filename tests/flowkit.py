"""Builders shared by the geo, enricher and flow tests: settings with salts, wire records, source messages."""
from __future__ import annotations

import base64
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

from bytewax.connectors.kafka import KafkaSourceMessage

from schemas.wire import RawRecord

DATA = Path(__file__).resolve().parent / "data"
GEO_CSV = DATA / "geoip_test.csv"
SALT_Q4 = b"q4-salt-0123456789abcdef-0123456"
SALT_Q1 = b"q1-salt-fedcba9876543210-6543210"
IPHONE_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
             "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")

# Raw PII planted in marked fields; none of it may reach an output row or a log line.
PLANTED = {
    "email": "Planted.Person@Example.org",
    "phone": "+4915112345678",
    "username": "planted_handle_77",
    "name": "Plantina Persona",
    "address": "12 Planted Street, Springfield",
    "ip": "81.2.69.142",
    "client_ip": "2a02:ec0:1:2:3:4:5:6",
}


def salts_env(q4: bytes = SALT_Q4, q1: bytes | None = SALT_Q1) -> str:
    entries = [f"2026Q4:{base64.b64encode(q4).decode()}"]
    if q1 is not None:
        entries.append(f"2027Q1:{base64.b64encode(q1).decode()}")
    return ",".join(entries)


def make_settings(data_dir: Path, geoip_db: Path | None = None, **env: str):
    from headwater.settings import load_settings

    values = {"HEADWATER_PII_SALTS": salts_env(), "HEADWATER_DATA_DIR": str(data_dir)}
    if geoip_db is not None:
        values["HEADWATER_GEOIP_DB"] = str(geoip_db)
    values.update(env)
    return load_settings(values)


def identify_event(user_id: str | None = "user-1", when: str = "2026-12-03T11:59:58Z", **extra: Any) -> dict:
    event = {
        "event": "identify", "event_id": str(uuid.uuid4()), "timestamp": when,
        "properties": {"email": PLANTED["email"], "phone": PLANTED["phone"], "username": PLANTED["username"],
                       "name": PLANTED["name"], "address": PLANTED["address"], "country": "DE"},
        "context": {"ip": PLANTED["ip"], "user_agent": IPHONE_UA, "locale": "de-DE"},
    }
    if user_id is not None:
        event["user_id"] = user_id
    else:
        event["anonymous_id"] = "anon-" + event["event_id"][:8]
    event.update(extra)
    return event


def page_event(user_id: str = "user-2", when: str = "2026-12-03T11:59:58Z") -> dict:
    return {"event": "page_viewed", "event_id": str(uuid.uuid4()), "timestamp": when, "user_id": user_id,
            "properties": {"url": "https://acme.example/pricing", "path": "/pricing"}, "context": {"locale": "en-US"}}


def wire(event: dict, received_at: str = "2026-12-03T12:00:00.500Z", sent_at: str | None = "2026-12-03T11:59:59Z",
         client_ip: str | None = PLANTED["client_ip"], user_agent: str | None = "headwater-python/0.1") -> bytes:
    return RawRecord(event, received_at=received_at, gateway_id="gw-test", sent_at=sent_at,
                     client_ip=client_ip, user_agent=user_agent).encode()


def message(value: bytes, offset: int, partition: int = 0, topic: str = "raw") -> KafkaSourceMessage:
    return KafkaSourceMessage(key=b"k", value=value, topic=topic, partition=partition, offset=offset)


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.timezone.utc)
