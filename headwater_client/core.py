"""The machinery the app client and the server-side emitter share: the durable queue, one sender, one
background thread, consent, the failure log and the counters. Subclasses only shape events."""
from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from headwater_client import wire
from headwater_client.queue import EventQueue, default_queue_path
from headwater_client.sender import FlushResult, Sender, Stats, backoff_delay
from headwater_client.transport import Transport

MAX_BATCH = 50
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
LIBRARY = {"name": "headwater-python", "version": "0.1.0"}
_CONSENT_KEY = "consent"


class Collector:
    """Capture and delivery for one signing identity (``device_id``).

    Delivery guarantee: at least once from this queue, exactly once in the pipeline through the gateway's
    event-id de-duplication and the per-batch ``Idempotency-Key``. One process may use a queue file at a time.
    """

    def __init__(self, url: str, device_id: str, kid: str, *, device_secret: bytes | None = None,
                 master_key: bytes | None = None, queue_path: str | Path | None = None, consent: bool = True,
                 batch_size: int = MAX_BATCH, flush_interval: float | None = 1.0, max_attempts: int = 5,
                 backoff_base: float = 0.25, backoff_max: float = 30.0, gzip: bool = True,
                 timeout: float = 10.0) -> None:
        if not device_id or len(device_id) > 128:
            raise ValueError("device_id must be 1-128 characters")
        if not kid:
            raise ValueError("kid is required")
        if (device_secret is None) == (master_key is None):
            raise ValueError("pass exactly one of device_secret and master_key")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}, got {batch_size}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if backoff_base <= 0 or backoff_max < backoff_base:
            raise ValueError("backoff_base must be > 0 and backoff_max >= backoff_base")
        secret = device_secret if device_secret is not None else wire.derive_secret(master_key, device_id)
        self.device_id = device_id
        self._batch_size = batch_size
        self._flush_interval = flush_interval or 0.0
        self._backoff_base, self._backoff_max = backoff_base, backoff_max
        self._transport = Transport(url, timeout=timeout)  # checks the URL before any file is opened
        self._queue = EventQueue(queue_path or default_queue_path(device_id))
        persisted = self._queue.get_meta(_CONSENT_KEY)
        # An explicit refusal always wins; otherwise a persisted opt-out survives restarts.
        self._consent = bool(consent) and persisted != "0"
        self._stats = Stats()
        self._sender = Sender(self._transport, self._queue, self._stats, device_id=device_id, kid=kid,
                              secret=secret, batch_size=batch_size, use_gzip=gzip, max_attempts=max_attempts,
                              backoff_base=backoff_base, backoff_max=backoff_max, timeout=timeout,
                              consented=lambda: self._consent)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._closed = False
        self._pending_at_close = 0
        self._thread: threading.Thread | None = None
        if self._flush_interval > 0:
            self._thread = threading.Thread(target=self._run, name=f"headwater-sender-{device_id}", daemon=True)
            self._thread.start()

    # --- capture --------------------------------------------------------------------------------
    def _enqueue(self, name: str, properties: dict[str, Any] | None, *, user_id: str | None,
                 anonymous_id: str | None, timestamp: dt.datetime | str | None, event_id: str | None,
                 context: dict[str, Any] | None) -> str:
        """Build, check and durably queue one event; returns its event_id (also when consent is off)."""
        if self._closed:
            raise RuntimeError("this client is closed")
        if not isinstance(name, str) or not EVENT_NAME.match(name):
            raise ValueError(f"event name must match {EVENT_NAME.pattern}, got {name!r}")
        if properties is None:
            properties = {}
        if not isinstance(properties, dict):
            raise TypeError(f"properties must be a dict, got {type(properties).__name__}")
        if event_id is None:
            event_id = str(uuid.uuid4())
        elif not isinstance(event_id, str) or not _UUID.match(event_id):
            raise ValueError(f"event_id must be a UUID string, got {event_id!r}")
        if not self._consent:
            self._stats.inc("dropped_no_consent")
            return event_id
        if user_id is None and anonymous_id is None:
            raise ValueError("an event needs a user_id or an anonymous_id")
        event: dict[str, Any] = {"event": name, "event_id": event_id, "timestamp": _timestamp(timestamp)}
        if user_id is not None:
            event["user_id"] = _subject("user_id", user_id)
        if anonymous_id is not None:
            event["anonymous_id"] = _subject("anonymous_id", anonymous_id)
        event["device_id"] = self.device_id
        event["properties"] = properties
        if context:
            event["context"] = context
        event["consent"] = {"analytics": True}
        payload = wire.dumps(event)
        if len(payload) > wire.MAX_EVENT_BYTES:
            raise ValueError(f"event is {len(payload)} bytes encoded; the limit is {wire.MAX_EVENT_BYTES}")
        unsealed = self._queue.append(event_id, payload)
        self._stats.inc("queued")
        if unsealed >= self._batch_size:
            self._wake.set()
        return event_id

    # --- delivery -------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> FlushResult:
        """Send everything queued now, in batches of at most ``batch_size``.

        The result covers every answer received since the previous ``flush`` returned (the background
        thread's too) plus what is still queued. A gateway that cannot be reached ends the flush at once
        with the events pending; transient errors are retried within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._consent:
            self._sender.deliver(deadline, threading.Event())
        result = self._sender.take_result()
        result.pending = self._queue.pending()
        return result

    def _run(self) -> None:
        offline_streak = 0
        delay = self._flush_interval
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not self._consent:
                delay = self._flush_interval
                continue
            try:
                outcome = self._sender.deliver(None, self._stop)
            except Exception:  # keep the thread alive; the events stay queued for the next pass
                outcome = "error"
            if outcome in ("offline", "error"):
                offline_streak += 1
                delay = max(self._flush_interval, backoff_delay(offline_streak, self._backoff_base,
                                                                self._backoff_max))
            else:
                offline_streak, delay = 0, self._flush_interval

    # --- consent --------------------------------------------------------------------------------
    def opt_out(self) -> int:
        """Consent withdrawn: stop capturing, delete the queue and the failure log, remember the choice.
        Returns how many queued events were deleted (a request already on the wire may still land)."""
        self._consent = False
        self._queue.set_meta(_CONSENT_KEY, "0")
        return self._queue.clear()

    def opt_in(self) -> None:
        self._queue.set_meta(_CONSENT_KEY, "1")
        self._consent = True

    @property
    def consent(self) -> bool:
        return self._consent

    # --- introspection --------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        values = self._stats.snapshot()
        values["pending"] = self._pending_at_close if self._closed else self._queue.pending()
        return values

    def failures(self) -> list[dict[str, Any]]:
        """The failure log: ``{"event_id", "reason", "errors", "failed_at", "event"}`` per event."""
        return self._queue.failures()

    def export_failures(self, path: str | Path) -> int:
        """Write the failure log as JSON lines to ``path``; returns how many events were written."""
        rows = self._queue.failures()
        with open(path, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        return len(rows)

    # --- lifecycle ------------------------------------------------------------------------------
    def close(self, timeout: float = 2.0) -> FlushResult | None:
        """Stop the background thread, flush for at most ``timeout`` seconds, close the queue."""
        if self._closed:
            return None
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        result = self.flush(timeout=timeout)
        self._pending_at_close = result.pending
        self._closed = True
        self._transport.close()
        self._queue.close()
        return result

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _timestamp(value: dt.datetime | str | None) -> str:
    if value is None or isinstance(value, dt.datetime):
        return wire.rfc3339(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"timestamp must be a datetime or an RFC 3339 string, got {type(value).__name__}")


def _subject(field: str, value: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise ValueError(f"{field} must be a string of 1-128 characters")
    return value
