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


class RedisKV:
    """The same operations on Redis, batched in one pipelined round trip per call.

    :param client: a ``redis.asyncio.Redis``
    """

    def __init__(self, client) -> None:
        self._redis = client

    @classmethod
    def from_url(cls, url: str) -> "RedisKV":
        import redis.asyncio as redis

        return cls(redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0,
                                        health_check_interval=30))

    async def set_nx(self, keys: list[str], value: bytes, ttl: int) -> list[bool]:
        if not keys:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, value, nx=True, ex=ttl)
            return [bool(r) for r in await pipe.execute()]

    async def set(self, keys: list[str], value: bytes, ttl: int) -> None:
        if not keys:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, value, ex=ttl)
            await pipe.execute()

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
