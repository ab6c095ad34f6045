"""What goes on the wire to ``POST /analytics/collect``: JSON, the batch body, gzip and the request signature.

Standard library only; orjson is used when it is installed because it is several times faster.
"""
from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import hmac
from typing import Any

try:  # optional speed-up; the output is the same compact UTF-8 JSON either way
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _orjson = None
import json as _json

GZIP_THRESHOLD = 1024
MAX_EVENT_BYTES = 32 * 1024  # the gateway's default per-event limit


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON. :raises TypeError: for a value JSON cannot represent"""
    if _orjson is not None:
        try:
            return _orjson.dumps(value)
        except _orjson.JSONEncodeError as exc:
            raise TypeError(f"not JSON-serialisable: {exc}") from None
    try:
        return _json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except ValueError as exc:
        raise TypeError(f"not JSON-serialisable: {exc}") from None


def loads(data: bytes) -> Any:
    return _orjson.loads(data) if _orjson is not None else _json.loads(data)


def rfc3339(moment: dt.datetime | None = None) -> str:
    """``moment`` (now by default) as RFC 3339 in UTC with microseconds; a naive datetime is taken as UTC."""
    moment = moment or dt.datetime.now(dt.timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def batch_body(events: list[bytes], sent_at: str, analytics_consent: bool = True) -> bytes:
    """The request body for already-encoded events, without decoding them again."""
    head = dumps({"sent_at": sent_at, "consent": {"analytics": analytics_consent}})
    return head[:-1] + b',"batch":[' + b",".join(events) + b"]}"


def encode_body(body: bytes, use_gzip: bool, threshold: int = GZIP_THRESHOLD) -> tuple[bytes, str | None]:
    """``(bytes to send, Content-Encoding)``. gzip with mtime 0, so a retry sends the same bytes."""
    if use_gzip and len(body) > threshold:
        return gzip.compress(body, compresslevel=6, mtime=0), "gzip"
    return body, None


def derive_secret(master_key: bytes, device_id: str) -> bytes:
    """The device secret: HMAC-SHA256 of the device id under the master key."""
    return hmac.new(master_key, device_id.encode(), hashlib.sha256).digest()


def signature_headers(secret: bytes, device_id: str, kid: str, timestamp: int, wire_body: bytes) -> dict[str, str]:
    """The three signature headers for ``wire_body`` (the exact bytes sent, gzip bytes when gzipped)."""
    stamp = str(timestamp)
    mac = hmac.new(secret, stamp.encode() + b".", hashlib.sha256)
    mac.update(wire_body)
    return {"X-Headwater-Device": device_id, "X-Headwater-Timestamp": stamp,
            "X-Headwater-Signature": f"kid={kid},v1={mac.hexdigest()}"}
