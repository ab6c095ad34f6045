"""Rollout controls that change without a restart: the edge-proxy switch, dark mode and the rollout percentage.

The defaults come from the settings (``gateway_edge_proxy_enabled``, ``gateway_dark_mode``,
``gateway_rollout_percent``). A flags file (``gateway_flags_file``, default ``<data_dir>/gateway/flags.toml``)
overrides any of them and is re-read when its modification time or size changes, checked at most every
``check_seconds``, so an operator (or a ConfigMap update) flips them on a running fleet::

    edge_proxy_enabled = true
    dark_mode = false
    rollout_percent = 25

A file that does not parse or validate is ignored as a whole (the last good flags stay in force and the
problem is logged and kept in :attr:`FlagSource.error`); a deleted file means the settings' defaults again.

Who is in the rollout is decided by a stable hash of the device id: ``bucket = sha256(salt ":" device_id)``
mod 10 000, in when ``bucket < rollout_percent * 100``. Raising the percentage only adds devices, a device
never flaps, and a different ``gateway_rollout_salt`` gives an independent population for the next rollout.
Clients ask ``GET /analytics/config?device_id=...`` and send to the edge only when ``enabled`` is true;
the gateway itself keeps accepting from every device, so a client with stale config loses nothing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

log = logging.getLogger("headwater.gateway.rollout")

BUCKETS = 10_000
_FIELDS = {"edge_proxy_enabled": bool, "dark_mode": bool, "rollout_percent": int}


@dataclass(frozen=True)
class Flags:
    edge_proxy_enabled: bool = True
    dark_mode: bool = False
    rollout_percent: int = 100

    def enabled_for(self, device_id: str, salt: str) -> bool:
        return self.edge_proxy_enabled and rollout_bucket(device_id, salt) < self.rollout_percent * (BUCKETS // 100)


def rollout_bucket(device_id: str, salt: str) -> int:
    """The device's place in ``0 .. 9999``; the same on every gateway and across restarts."""
    digest = hashlib.sha256(f"{salt}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def parse_flags(text: str, defaults: Flags) -> Flags:
    """The flags a file sets, over ``defaults``. :raises ValueError: listing every problem at once"""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    problems, values = [], {}
    for key, value in table.items():
        kind = _FIELDS.get(key)
        if kind is None:
            problems.append(f"unknown flag {key!r} (known: {', '.join(_FIELDS)})")
        elif type(value) is not kind:
            problems.append(f"{key} must be a {kind.__name__}")
        elif key == "rollout_percent" and not 0 <= value <= 100:
            problems.append("rollout_percent must be 0-100")
        else:
            values[key] = value
    if problems:
        raise ValueError("; ".join(problems))
    return replace(defaults, **values)


class FlagSource:
    """The current :class:`Flags`: the defaults, overridden by the flags file while it exists.

    :param defaults: the flags from the settings
    :param path: the flags file (None: the defaults are all there is)
    :param check_seconds: how often the file's mtime is looked at (a ``stat``; requests never wait on more)
    """

    def __init__(self, defaults: Flags, path: Path | None, check_seconds: float = 1.0) -> None:
        self.defaults = defaults
        self.path = path
        self._check = check_seconds
        self._flags = defaults
        self._stamp: tuple[int, int] | None = None
        self._checked_at = float("-inf")
        self.error: str | None = None

    def current(self) -> Flags:
        now = time.monotonic()
        if self.path is not None and now - self._checked_at >= self._check:
            self._checked_at = now
            self._reload_if_changed()
        return self._flags

    def _reload_if_changed(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None:
                log.info("flags file %s removed: back to the settings' defaults", self.path)
            self._stamp, self._flags, self.error = None, self.defaults, None
            return
        except OSError as exc:
            self.error = f"cannot stat {self.path}: {exc}"
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            flags = parse_flags(Path(self.path).read_text(), self.defaults)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.error = f"{self.path}: {exc}"
            log.error("flags file ignored, keeping the flags in force: %s", self.error)
            return
        if flags != self._flags:
            log.info("flags changed", extra={"flags": flags.__dict__})
        self._flags, self.error = flags, None

    def describe(self) -> dict[str, Any]:
        return {"source": "file" if self._stamp is not None and self.error is None else "settings",
                "error": self.error}
