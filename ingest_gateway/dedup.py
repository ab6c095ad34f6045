"""Two kinds of de-duplication at the edge.

- :class:`EventDedup`: an ``event_id`` seen within the window is a duplicate. An id is first *claimed* for a
  short while, then *confirmed* for the whole window once its batch is durable, or *released* when the batch
  could not be taken, so a failed request never turns its own retry into "duplicates" (and a crash between
  claim and publish blocks a retry for ``pending_ttl`` seconds at most).
- :class:`IdempotencyCache`: a retried request with the same ``Idempotency-Key`` (per device) gets the first
  answer back and publishes nothing. The key is bound to a hash of the body: reusing it for a different body
  is a client bug and is refused.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

MAX_IDEMPOTENCY_KEY = 255
_PENDING = b"pending"


class EventDedup:
    """:param kv: a :class:`~ingest_gateway.kv.MemoryKV` or :class:`~ingest_gateway.kv.RedisKV`"""

    def __init__(self, kv, window_seconds: int, pending_ttl: int = 120) -> None:
        self._kv = kv
        self._window = window_seconds
        self._pending_ttl = min(pending_ttl, window_seconds)

    @staticmethod
    def _keys(event_ids: list[str]) -> list[str]:
        return ["hw:ev:" + e for e in event_ids]

    async def claim(self, event_ids: list[str]) -> list[bool]:
        """True for each id seen for the first time (also within this list)."""
        return await self._kv.set_nx(self._keys(event_ids), _PENDING, self._pending_ttl)

    async def confirm(self, event_ids: list[str]) -> None:
        await self._kv.set(self._keys(event_ids), b"1", self._window)

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
