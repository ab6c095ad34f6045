"""Gateway options, read from the shared settings object (fields `gateway_*` and `audit_hash_key`).

Each option is read from ``settings`` under the name given in ``_SETTING_NAMES``; tests and embedders may
override any of them through :meth:`GatewayOptions.from_settings`. The settings (``HEADWATER_<NAME>``):

=============================== ======== ============= ====================================================
setting                         type     default       meaning
=============================== ======== ============= ====================================================
gateway_dark_mode               bool     False         validate, count and audit, publish nothing (flag)
gateway_edge_proxy_enabled      bool     True          clients should send to the edge at all (flag)
gateway_rollout_percent         int      100           share of devices told to send here (flag)
gateway_rollout_salt            str      edge-proxy    salt of the device-id hash choosing the rollout
gateway_flags_file              Path     (data dir)    flags file overriding the (flag) rows, see rollout.py
gateway_flags_check_seconds     float    1.0           how often the flags file's mtime is checked
gateway_id                      str      hostname      written into every raw record as ``gateway_id``
gateway_require_signature       bool     None          None = required exactly when hmac_keys is non-empty
gateway_max_inflight_requests   int      256           per worker; beyond it requests get 429
gateway_retry_after_seconds     int      1             the Retry-After sent with 429 and 503
gateway_spool_max_bytes         int      1 GiB         disk spool bound per worker; beyond it 503
gateway_delivery_timeout_ms     int      5000          how long Kafka may take to ack before spooling
gateway_optout_refresh_seconds  float    5.0           how often the opt-out registry snapshot reloads
gateway_trust_forwarded_for     bool     False         take the client IP from X-Forwarded-For
segment_max_batch_events        int      500           most messages per Segment ``/v1/batch`` request
audit_hash_key                  Secret   (generated)   base64 key of the salted payload hash in audits
=============================== ======== ============= ====================================================
"""
from __future__ import annotations

import base64
import os
import socket
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

_SETTING_NAMES = {
    "dark_mode": "gateway_dark_mode",
    "edge_proxy_enabled": "gateway_edge_proxy_enabled",
    "rollout_percent": "gateway_rollout_percent",
    "rollout_salt": "gateway_rollout_salt",
    "flags_file": "gateway_flags_file",
    "flags_check_seconds": "gateway_flags_check_seconds",
    "gateway_id": "gateway_id",
    "require_signature": "gateway_require_signature",
    "max_inflight_requests": "gateway_max_inflight_requests",
    "retry_after_seconds": "gateway_retry_after_seconds",
    "spool_max_bytes": "gateway_spool_max_bytes",
    "delivery_timeout_ms": "gateway_delivery_timeout_ms",
    "optout_refresh_seconds": "gateway_optout_refresh_seconds",
    "trust_forwarded_for": "gateway_trust_forwarded_for",
    "segment_max_batch_events": "segment_max_batch_events",
    "audit_hash_key": "audit_hash_key",
}


@dataclass(frozen=True)
class GatewayOptions:
    """What the gateway needs beyond :class:`headwater.settings.Settings` (see the module docstring)."""

    dark_mode: bool = False
    edge_proxy_enabled: bool = True
    rollout_percent: int = 100
    rollout_salt: str = "edge-proxy"
    flags_file: Path | None = None
    flags_check_seconds: float = 1.0
    gateway_id: str = ""
    require_signature: bool | None = None
    max_inflight_requests: int = 256
    retry_after_seconds: int = 1
    spool_max_bytes: int = 1 << 30
    delivery_timeout_ms: int = 5000
    optout_refresh_seconds: float = 5.0
    trust_forwarded_for: bool = False
    segment_max_batch_events: int = 500
    audit_hash_key: bytes | None = None
    spool_dir: Path | None = None
    sqlite_path: Path | None = None

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> "GatewayOptions":
        """Read every option from ``settings`` (when it has the field), then apply ``overrides``.

        :param settings: the shared settings object
        :param overrides: option name -> value, e.g. ``dark_mode=True``
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = _SETTING_NAMES.get(f.name)
            value = getattr(settings, name, None) if name else None
            if value is not None:
                values[f.name] = value.reveal() if hasattr(value, "reveal") else value
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown gateway option(s): {', '.join(sorted(unknown))}")
        opts = replace(cls(**values), **overrides)
        data_dir = Path(getattr(settings, "data_dir", Path("var")))
        if not opts.gateway_id:
            opts = replace(opts, gateway_id=f"gw-{socket.gethostname()}")
        if opts.spool_dir is None:
            opts = replace(opts, spool_dir=data_dir / "gateway" / "spool")
        if opts.flags_file is None:
            opts = replace(opts, flags_file=data_dir / "gateway" / "flags.toml")
        if opts.sqlite_path is None:
            opts = replace(opts, sqlite_path=data_dir / "gateway" / "gateway.sqlite3")
        if isinstance(opts.audit_hash_key, str):
            opts = replace(opts, audit_hash_key=base64.b64decode(opts.audit_hash_key))
        return opts

    def signature_required(self, have_keys: bool) -> bool:
        return have_keys if self.require_signature is None else self.require_signature


def deployment_key(path: Path) -> bytes:
    """A random per-deployment key kept in ``path`` (created once, mode 0600, race-free between workers).

    Used for the audit payload hash when ``audit_hash_key`` is not configured, so hashes stay comparable
    across restarts of an embedded deployment without anyone having to invent a key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            data = path.read_bytes()
            if len(data) == 32:
                return data
            time.sleep(0.01)  # another worker is still writing it
        raise RuntimeError(f"{path} does not hold a 32-byte key")
    key = os.urandom(32)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    return key
