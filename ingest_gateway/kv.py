"""Short-lived keys shared by the gateway's checks: seen signatures, event ids, idempotent answers.

Redis (``SET NX EX``) when ``redis_url`` is set, so every worker and replica sees the same keys; otherwise
an in-process store, which is right for the embedded single-process gateway only.
"""
from __future__ import annotations

import time
from collections import OrderedDict


class MemoryKV:
    """In-process keys with expiry, bounded to ``max_keys`` (the oldest go first when full).

    :param max_keys: bound on memory; past it the oldest keys are forgotten early
    """

    def __init__(self, max_keys: int = 1_000_000) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_keys

    def _sweep(self, now: float) -> None:
        data = self._data
        while data:
            key, (expires, _) = next(iter(data.items()))
            if expires > now and len(data) <= self._max:
                break
            data.popitem(last=False)

    def _live(self, key: str, now: float) -> bytes | None:
        item = self._data.get(key)
        if item is None or item[0] <= now:
            return None
        return item[1]

    async def set_nx(self, keys: list[str], value: bytes, ttl: int) -> list[bool]:
        now = time.monotonic()
        self._sweep(now)
        out = []
        for key in keys:
            if self._live(key, now) is not None:
                out.append(False)
                continue
            self._data[key] = (now + ttl, value)
            self._data.move_to_end(key)
            out.append(True)
        return out

    async def set(self, keys: list[str], value: bytes, ttl: int) -> None:
        now = time.monotonic()
        for key in keys:
            self._data[key] = (now + ttl, value)
            self._data.move_to_end(key)

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._data.pop(key, None)

    async def get(self, key: str) -> bytes | None:
        return self._live(key, time.monotonic())

    async def first_seen(self, key: str, ttl_seconds: int) -> bool:
        return (await self.set_nx([key], b"1", ttl_seconds))[0]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()


# One command per batch instead of one per key: redis-py spends far more CPU packing and parsing 50
# pipelined SETs than Redis spends running them, and that was most of the gateway's time per request.
_SET_NX_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'EX', ARGV[2]) then out[i] = 1 else out[i] = 0 end
end
return out
"""
_SET_SCRIPT = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1], 'EX', ARGV[2])
end
return #KEYS
"""


class RedisKV:
    """The same operations on Redis, one round trip and one command per call (a server-side script).

    The multi-key scripts need all keys on one node: with Redis Cluster, point the gateway at a
    non-clustered Redis (the keys are short-lived) or give the keys a hash tag.

    :param client: a ``redis.asyncio.Redis``
    """

    def __init__(self, client) -> None:
        self._redis = client
        self._set_nx = client.register_script(_SET_NX_SCRIPT)
        self._set = client.register_script(_SET_SCRIPT)

    @classmethod
    def from_url(cls, url: str) -> "RedisKV":
        import redis.asyncio as redis

        return cls(redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0,
                                        health_check_interval=30))

    async def set_nx(self, keys: list[str], value: bytes, ttl: int) -> list[bool]:
        if not keys:
            return []
        return [r == 1 for r in await self._set_nx(keys=keys, args=[value, ttl])]

    async def set(self, keys: list[str], value: bytes, ttl: int) -> None:
        if not keys:
            return
        await self._set(keys=keys, args=[value, ttl])

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await self._redis.delete(*keys)

    async def get(self, key: str) -> bytes | None:
        return await self._redis.get(key)

    async def first_seen(self, key: str, ttl_seconds: int) -> bool:
        return bool(await self._redis.set(key, b"1", nx=True, ex=ttl_seconds))

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
