"""Delivery of sealed batches: signing, retries with backoff, and reading the gateway's per-event answer.

Outcomes of one attempt:

- 2xx: the batch is done. Rejected events are final; they go to the failure log with the gateway's reasons.
- 429, 5xx, 408, 409 (the first request with this key is still running), a timeout or a connection dropped
  mid-request, 401 ``signature_replayed`` or a clock-skew refusal: transient. The batch is retried with the
  same body and ``Idempotency-Key`` (signed anew) after a full-jitter backoff, or after ``Retry-After``, until
  ``max_attempts``; then its events go to the failure log with the last error.
- 413 for too many events or too many bytes: the events go back to the queue and are re-batched at half the
  size (a gateway may be configured below 50 events per request); a single event that is too large is final.
- any other 4xx (bad signature, malformed body, …): final; the events go to the failure log with the code.
- the gateway cannot be reached at all: nothing was sent, no attempt is spent (the device is offline);
  the events stay queued and the pass stops.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from headwater_client import wire
from headwater_client.queue import EventQueue, SealedBatch
from headwater_client.transport import Answer, LostAnswer, Offline, Transport

COLLECT_PATH = "/analytics/collect"
USER_AGENT = "headwater-python/0.1"
STAT_NAMES = ("queued", "sent_batches", "accepted", "rejected", "duplicates", "no_consent", "dark", "retries",
              "failed", "dropped_no_consent", "offline", "resized")
_SKEW_CODES = ("timestamp_expired", "timestamp_in_future")
_TOO_LARGE_CODES = ("too_many_events", "body_too_large", "decompressed_too_large")


@dataclass
class FlushResult:
    """What happened to queued events. ``rejected`` items are ``{"event_id", "index", "errors"}``;
    ``failed`` events went to the failure log; ``pending`` ones are still queued (e.g. the gateway is down)."""

    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    no_consent: int = 0
    failed: int = 0
    pending: int = 0
    dark: int = 0

    def add(self, other: "FlushResult") -> None:
        self.accepted += other.accepted
        self.rejected.extend(other.rejected)
        self.duplicates += other.duplicates
        self.no_consent += other.no_consent
        self.failed += other.failed
        self.dark += other.dark


class Stats:
    """Thread-safe counters; :meth:`snapshot` is what ``client.stats`` shows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(STAT_NAMES, 0)

    def inc(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]`` for the ``attempt``-th failure."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0.0, ceiling)


class PassEnded(Exception):
    """A delivery pass stops early; ``reason`` is ``offline``, ``deadline``, ``stopped`` or ``no_consent``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _error_of(answer: Answer) -> tuple[str, str]:
    try:
        error = wire.loads(answer.body)["error"]
        return str(error.get("code") or f"http_{answer.status}"), str(error.get("message") or "")
    except Exception:
        return f"http_{answer.status}", answer.body[:200].decode("utf-8", "replace")


class Sender:
    """Sends the queue's batches for one signing identity. One pass at a time (:meth:`deliver` holds a lock).

    :param consented: asked before every attempt; False stops the pass
    """

    def __init__(self, transport: Transport, queue: EventQueue, stats: Stats, *, device_id: str, kid: str,
                 secret: bytes, batch_size: int, use_gzip: bool, max_attempts: int, backoff_base: float,
                 backoff_max: float, timeout: float, consented: Callable[[], bool],
                 rng: random.Random | None = None) -> None:
        self._transport, self._queue, self._stats = transport, queue, stats
        self._device_id, self._kid, self._secret = device_id, kid, secret
        self._batch_size, self._gzip, self._max_attempts = batch_size, use_gzip, max_attempts
        self._backoff_base, self._backoff_max, self._timeout = backoff_base, backoff_max, timeout
        self._consented = consented
        self._rng = rng or random.Random()
        self._clock_offset = 0.0  # gateway clock minus ours, learned from a skew refusal
        self._lock = threading.Lock()
        self._result_lock = threading.Lock()
        self._unreported = FlushResult()

    def take_result(self) -> FlushResult:
        """Everything delivered since the last call (by any pass), and reset."""
        with self._result_lock:
            result, self._unreported = self._unreported, FlushResult()
        return result

    def deliver(self, deadline: float | None, stop: threading.Event) -> str:
        """Send sealed batches, then seal and send the rest of the queue.

        :param deadline: ``time.monotonic()`` value to give up at (pending events stay queued)
        :returns: ``done`` or why the pass ended early
        """
        acquired = self._lock.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic()))
        if not acquired:
            return "deadline"
        try:
            for batch_id in self._queue.sealed():
                batch = self._queue.load(batch_id)
                if batch is not None:
                    self._send(batch, deadline, stop)
            while True:
                self._check(deadline, stop)
                batch = self._queue.seal(self._batch_size)
                if batch is None:
                    return "done"
                self._send(batch, deadline, stop)
        except PassEnded as ended:
            return ended.reason
        finally:
            self._lock.release()

    def _check(self, deadline: float | None, stop: threading.Event) -> None:
        if stop.is_set():
            raise PassEnded("stopped")
        if not self._consented():
            raise PassEnded("no_consent")
        if deadline is not None and time.monotonic() >= deadline:
            raise PassEnded("deadline")

    def _send(self, batch: SealedBatch, deadline: float | None, stop: threading.Event) -> None:
        attempts, signed_at = batch.attempts, batch.signed_at
        wire_body, encoding = wire.encode_body(batch.body, self._gzip)
        while True:
            self._check(deadline, stop)
            # Strictly later than the previous attempt: the gateway refuses a signature it has seen.
            signed_at = max(int(time.time() + self._clock_offset), signed_at + 1)
            headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                       "Idempotency-Key": batch.idempotency_key,
                       **wire.signature_headers(self._secret, self._device_id, self._kid, signed_at, wire_body)}
            if encoding:
                headers["Content-Encoding"] = encoding
            timeout = self._timeout if deadline is None else max(0.05, min(self._timeout, deadline - time.monotonic()))
            retry_after: float | None = None
            try:
                answer = self._transport.post(COLLECT_PATH, wire_body, headers, timeout)
            except Offline:
                self._stats.inc("offline")
                raise PassEnded("offline") from None
            except LostAnswer as exc:
                error = f"lost_answer: {exc}"
            else:
                if 200 <= answer.status < 300:
                    self._answered(batch, answer)
                    return
                code, message = _error_of(answer)
                error = f"{answer.status} {code}: {message}"
                if answer.status == 413 and code in _TOO_LARGE_CODES and len(batch.event_ids) > 1:
                    # This gateway takes smaller batches: nothing was published, so re-batch smaller.
                    self._batch_size = max(1, len(batch.event_ids) // 2)
                    self._queue.unseal(batch.batch_id)
                    self._stats.inc("resized")
                    return
                if not self._transient(answer, code):
                    self._give_up(batch, "refused", error)
                    return
                retry_after = answer.retry_after()
            attempts += 1
            self._queue.record_attempt(batch.batch_id, signed_at, error)
            if attempts >= self._max_attempts:
                self._give_up(batch, "retries_exhausted", error)
                return
            self._stats.inc("retries")
            delay = retry_after if retry_after is not None else backoff_delay(
                attempts, self._backoff_base, self._backoff_max, self._rng)
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise PassEnded("deadline")
            if stop.wait(delay):
                raise PassEnded("stopped")

    def _transient(self, answer: Answer, code: str) -> bool:
        status = answer.status
        if status in (408, 409, 429) or status >= 500:
            return True
        if status == 401 and code == "signature_replayed":
            return True
        if status == 401 and code in _SKEW_CODES:
            server_now = answer.server_time()
            if server_now is not None:
                self._clock_offset = server_now - time.time()
            return True
        return False

    def _give_up(self, batch: SealedBatch, reason: str, error: str) -> None:
        removed = self._queue.finish(batch.batch_id, [(i, reason, [error]) for i in range(len(batch.event_ids))])
        self._stats.inc("failed", removed)
        with self._result_lock:
            self._unreported.failed += removed

    def _answered(self, batch: SealedBatch, answer: Answer) -> None:
        count = len(batch.event_ids)
        try:
            doc = wire.loads(answer.body)
            rejected = [{"event_id": r.get("event_id"), "index": int(r["index"]), "errors": list(r.get("errors") or [])}
                        for r in doc.get("rejected") or []]
            part = FlushResult(accepted=int(doc.get("accepted", 0)), rejected=rejected,
                               duplicates=int(doc.get("duplicates", 0)), no_consent=int(doc.get("no_consent", 0)),
                               dark=int(doc.get("dark", 0)))
        except Exception:  # a 2xx we cannot read still means the gateway took the batch
            part = FlushResult(accepted=count)
        for item in part.rejected:
            if item["event_id"] is None and 0 <= item["index"] < count:
                item["event_id"] = batch.event_ids[item["index"]]
        self._queue.finish(batch.batch_id, [(r["index"], "rejected", r["errors"]) for r in part.rejected])
        for name in ("accepted", "duplicates", "no_consent", "dark"):
            self._stats.inc(name, getattr(part, name))
        self._stats.inc("rejected", len(part.rejected))
        self._stats.inc("sent_batches")
        with self._result_lock:
            self._unreported.add(part)
