"""Request signatures for ``POST /analytics/collect``.

Each device holds a secret derived from a master key, never stored server-side::

    secret    = HMAC-SHA256(master_key[kid], device_id)
    signature = hex(HMAC-SHA256(secret, timestamp + "." + raw_body))

sent as ``X-Headwater-Signature: kid=<kid>,v1=<signature>`` with ``X-Headwater-Device`` and
``X-Headwater-Timestamp`` (unix seconds). The body is the bytes as sent (the gzip bytes when compressed).
Several kids are live at once so master keys can rotate. A signature is accepted once: replays within the
skew window are refused (older ones fail the timestamp check anyway).
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Mapping, Protocol

HEADER_SIGNATURE = "x-headwater-signature"
HEADER_DEVICE = "x-headwater-device"
HEADER_TIMESTAMP = "x-headwater-timestamp"
MAX_DEVICE_ID = 128


class SignatureError(Exception):
    """A request whose signature is missing or wrong. ``code`` is machine-readable."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


def device_secret(master_key: bytes, device_id: str) -> bytes:
    return hmac.new(master_key, device_id.encode(), hashlib.sha256).digest()


def compute_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode() + b".", hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def sign_request(body: bytes, device_id: str, kid: str, master_key: bytes,
                 timestamp: int | None = None) -> dict[str, str]:
    """The headers a client sends with ``body`` (for SDKs, tools and tests).

    :param body: the exact bytes that go on the wire (gzip them first if sending gzip)
    :param device_id: the device's stable identifier
    :param kid: id of the master key the device secret was derived from
    :param master_key: that master key (a client normally holds only the derived secret)
    :param timestamp: unix seconds; now by default
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sig = compute_signature(device_secret(master_key, device_id), ts, body)
    return {"X-Headwater-Device": device_id, "X-Headwater-Timestamp": ts,
            "X-Headwater-Signature": f"kid={kid},v1={sig}"}


class ReplayStore(Protocol):
    """Remembers keys for a while (:class:`ingest_gateway.kv.MemoryKV` or :class:`~ingest_gateway.kv.RedisKV`)."""

    async def first_seen(self, key: str, ttl_seconds: int) -> bool:
        """True exactly once per ``key`` within ``ttl_seconds``."""


def parse_signature_header(value: str) -> tuple[str, str]:
    parts: dict[str, str] = {}
    for item in value.split(","):
        name, sep, val = item.strip().partition("=")
        if sep:
            parts[name.strip()] = val.strip()
    kid, sig = parts.get("kid"), parts.get("v1")
    if not kid or not sig:
        raise SignatureError("signature_malformed", "X-Headwater-Signature must look like kid=<kid>,v1=<hex>")
    return kid, sig


class SignatureVerifier:
    """Checks signed requests against the live master keys.

    :param keys: kid -> master key; every kid listed is accepted (rotation keeps the old one live a while)
    :param skew_seconds: how far the client's timestamp may be from ours, either way
    :param replays: where seen signatures are remembered for the skew window
    """

    def __init__(self, keys: Mapping[str, bytes], skew_seconds: int, replays: ReplayStore) -> None:
        self._keys = dict(keys)
        self._skew = skew_seconds
        self._replays = replays

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> tuple[str, str]:
        """Check key, timestamp and MAC (no replay check: see :meth:`check_replay`).

        :returns: ``(device_id, signature)``
        :raises SignatureError: with the reason
        """
        device = headers.get(HEADER_DEVICE)
        stamp = headers.get(HEADER_TIMESTAMP)
        header = headers.get(HEADER_SIGNATURE)
        if not header or not device or not stamp:
            missing = [h for h, v in ((HEADER_SIGNATURE, header), (HEADER_DEVICE, device),
                                      (HEADER_TIMESTAMP, stamp)) if not v]
            raise SignatureError("signature_missing", "missing header(s): " + ", ".join(missing))
        if len(device) > MAX_DEVICE_ID:
            raise SignatureError("device_invalid", f"X-Headwater-Device is longer than {MAX_DEVICE_ID} characters")
        kid, sig = parse_signature_header(header)
        master = self._keys.get(kid)
        if master is None:
            raise SignatureError("unknown_kid", f"signing key id {kid!r} is not known to this gateway")
        if not stamp.isdigit() or len(stamp) > 12:
            raise SignatureError("timestamp_invalid", "X-Headwater-Timestamp must be unix seconds")
        now = time.time() if now is None else now
        drift = int(stamp) - now
        if drift > self._skew:
            raise SignatureError("timestamp_in_future", f"timestamp is {int(drift)} s ahead of the gateway clock")
        if -drift > self._skew:
            raise SignatureError("timestamp_expired", f"timestamp is {int(-drift)} s old; the window is {self._skew} s")
        expected = compute_signature(device_secret(master, device), stamp, body)
        if not hmac.compare_digest(expected.encode(), sig.lower().encode()):
            raise SignatureError("signature_mismatch", "signature does not match the body")
        return device, expected

    def replay_key(self, signature: str) -> tuple[str, int]:
        """``(key, ttl)`` under which a used signature is remembered: a timestamp is accepted up to skew
        seconds either side, so a signature is live for 2 * skew. The gateway sets this key together with
        its other per-request keys (one round trip); :meth:`check_replay` does it on its own."""
        return "hw:sig:" + signature, 2 * self._skew

    async def check_replay(self, signature: str) -> None:
        """:raises SignatureError: when this (valid) signature was already used within the window."""
        if not await self._replays.first_seen(*self.replay_key(signature)):
            raise replayed_error()


def replayed_error() -> SignatureError:
    return SignatureError("signature_replayed", "this signature was already used; sign each request anew")
