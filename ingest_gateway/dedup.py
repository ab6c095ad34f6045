"""Two kinds of de-duplication at the edge.

- :class:`EventDedup`: an ``event_id`` seen within the window is a duplicate. An id is first *claimed* for a
  short while, then *confirmed* for the whole window once its batch is durable, or *released* when the batch
  could not be taken, so a failed request never turns its own retry into "duplicates" (and a crash between
  claim and publish blocks a retry for ``pending_ttl`` seconds at most). The claim shares its round trip
  with the request's replay check and with the confirmations of earlier requests (:meth:`EventDedup.admit`).
- :class:`IdempotencyCache`: a retried request with the same ``Idempotency-Key`` (per device) gets the first
  answer back and publishes nothing. The key is bound to a hash of the body: reusing it for a different body
  is a client bug and is refused.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Callable

import orjson

from ingest_gateway.kv import AdmitStep

log = logging.getLogger("headwater.gateway.dedup")

MAX_IDEMPOTENCY_KEY = 255
_PENDING = b"pending"
_EVENT_PREFIX = "hw:ev:"


class Replayed(Exception):
    """The request's signature was already used within its window (see :meth:`EventDedup.admit`)."""


class EventDedup:
    """:param kv: a :class:`~ingest_gateway.kv.MemoryKV` or :class:`~ingest_gateway.kv.RedisKV`
    :param window_seconds: how long a durable event id is remembered
    :param pending_ttl: how long a claimed id blocks its duplicates before its batch is durable
    :param settle_delay: how long confirmations may wait to ride along with the next request's
        admission before they are written on their own
    :param on_error: told of each failed background write of confirmations (e.g. to count it)

    Confirmations are written lazily: a confirmed id only turns from "pending" into "seen for the window",
    and until then its pending claim already answers "duplicate", so they wait (well under ``pending_ttl``)
    and go to the store with the next request's admission, in the same round trip.
    """

    #: confirmations carried by one admission at most (bounds the work of one script run)
    MAX_SETTLE_PER_CALL = 2000
    #: confirmations held while the store is failing; beyond it the oldest are dropped (they expire as
    #: pending claims, after which a late duplicate is accepted again: the sinks are idempotent anyway)
    MAX_UNSETTLED = 200_000

    def __init__(self, kv, window_seconds: int, pending_ttl: int = 120, settle_delay: float = 0.02,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self._kv = kv
        self._on_error = on_error
        self._window = window_seconds
        self._pending_ttl = min(pending_ttl, window_seconds)
        self._settle_delay = settle_delay
        self._unsettled: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task | None = None

    @staticmethod
    def _keys(event_ids: list[str]) -> list[str]:
        return [_EVENT_PREFIX + e for e in event_ids]

    def _take_unsettled(self) -> list[str]:
        taken = self._unsettled[: self.MAX_SETTLE_PER_CALL]
        del self._unsettled[: self.MAX_SETTLE_PER_CALL]
        return taken

    def _give_back(self, event_ids: list[str]) -> None:
        self._unsettled[:0] = event_ids
        overflow = len(self._unsettled) - self.MAX_UNSETTLED
        if overflow > 0:
            del self._unsettled[:overflow]

    async def admit(self, event_ids: list[str], once_key: str | None = None, once_ttl: int = 0) -> list[bool]:
        """Claim ``event_ids`` and, when given, check ``once_key`` first, in one round trip.

        :returns: True for each id seen for the first time (also within this list)
        :raises Replayed: when ``once_key`` was already set; nothing is claimed then
        """
        settle = self._take_unsettled()
        step = AdmitStep(prefix=_EVENT_PREFIX, claim=event_ids, claim_value=_PENDING, claim_ttl=self._pending_ttl,
                         once_key=once_key, once_ttl=once_ttl, settle=settle, settle_value=b"1",
                         settle_ttl=self._window)
        try:
            first = await self._kv.admit(step)
        except BaseException:
            self._give_back(settle)
            raise
        if first is None:
            raise Replayed(once_key)
        return first

    async def claim(self, event_ids: list[str]) -> list[bool]:
        """True for each id seen for the first time (also within this list)."""
        return await self.admit(event_ids)

    async def confirm(self, event_ids: list[str]) -> None:
        """Remember ``event_ids`` for the whole window (written with the next admission, or shortly)."""
        self._unsettled.extend(event_ids)
        if len(self._unsettled) > self.MAX_UNSETTLED:
            del self._unsettled[: len(self._unsettled) - self.MAX_UNSETTLED]
        if self._timer is None and self._flushing is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._settle_delay, self._start_flush)

    def _start_flush(self) -> None:
        self._timer = None
        if self._unsettled and self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_in_background())

    async def _flush_in_background(self) -> None:
        try:
            await self.flush()
        except Exception as exc:  # kept for the next admission or the next attempt
            log.warning("could not write %d event-id confirmation(s): %s", len(self._unsettled), exc)
            if self._on_error is not None:
                self._on_error(exc)
        finally:
            self._flushing = None
            if self._unsettled and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(max(self._settle_delay, 1.0), self._start_flush)

    async def flush(self) -> None:
        """Write every confirmation that is still waiting (also called when the gateway closes)."""
        while self._unsettled:
            settle = self._take_unsettled()
            try:
                await self._kv.set(self._keys(settle), b"1", self._window)
            except BaseException:
                self._give_back(settle)
                raise

    async def close(self) -> None:
        """Stop the timer and write what is left."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        await self.flush()

    async def release(self, event_ids: list[str]) -> None:
        await self._kv.delete(self._keys(event_ids))


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes


class IdempotencyError(Exception):
    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.message = status, code, message
        super().__init__(f"{code}: {message}")


class IdempotencyCache:
    """:param window_seconds: how long a first answer is kept for retries"""

    def __init__(self, kv, window_seconds: int, pending_ttl: int = 60) -> None:
        self._kv = kv
        self._window = window_seconds
        self._pending_ttl = min(pending_ttl, window_seconds)

    @staticmethod
    def key(scope: str, idempotency_key: str) -> str:
        if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY or not idempotency_key.isprintable():
            raise IdempotencyError(400, "idempotency_key_invalid",
                                   f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters")
        digest = hashlib.sha256(f"{scope}\0{idempotency_key}".encode()).hexdigest()
        return "hw:idem:" + digest

    async def begin(self, key: str, body_hash: str) -> StoredResponse | None:
        """Start a request under ``key``: None when it is new, the stored answer when it is a retry.

        :raises IdempotencyError: 409 while the first request is still running, 422 for a different body
        """
        marker = _PENDING + b":" + body_hash.encode()
        for _ in range(2):
            if (await self._kv.set_nx([key], marker, self._pending_ttl))[0]:
                return None
            value = await self._kv.get(key)
            if value is None:
                continue  # expired between the two calls: try to claim it again
            if value.startswith(_PENDING):
                if value != marker:
                    raise self._mismatch()
                raise IdempotencyError(409, "idempotency_key_in_use",
                                       "a request with this Idempotency-Key is still being processed; retry later")
            stored = orjson.loads(value)
            if stored["h"] != body_hash:
                raise self._mismatch()
            return StoredResponse(stored["s"], stored["b"].encode())
        return None

    @staticmethod
    def _mismatch() -> IdempotencyError:
        return IdempotencyError(422, "idempotency_key_reused",
                                "this Idempotency-Key was used for a different request body")

    async def finish(self, key: str, body_hash: str, response: StoredResponse) -> None:
        value = orjson.dumps({"h": body_hash, "s": response.status, "b": response.body.decode()})
        await self._kv.set([key], value, self._window)

    async def abandon(self, key: str) -> None:
        """Forget a request that produced no durable answer, so that its retry runs in full."""
        await self._kv.delete([key])
