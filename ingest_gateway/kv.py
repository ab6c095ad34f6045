"""Short-lived keys shared by the gateway's checks: seen signatures, event ids, idempotent answers.

Redis (``SET NX EX``) when ``redis_url`` is set, so every worker and replica sees the same keys; otherwise
an in-process store, which is right for the embedded single-process gateway only.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ingest_gateway.resp import RespPool, Script


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

    async def admit(self, step: AdmitStep) -> list[bool] | None:
        """See :class:`AdmitStep`; the same answers as :meth:`RedisKV.admit`, in process."""
        prefix = step.prefix
        if step.settle:
            await self.set([prefix + name for name in step.settle], step.settle_value, step.settle_ttl)
        if step.once_key is not None and not (await self.set_nx([step.once_key], b"1", step.once_ttl))[0]:
            return None
        if not step.claim:
            return []
        return await self.set_nx([prefix + name for name in step.claim], step.claim_value, step.claim_ttl)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()


@dataclass(frozen=True, slots=True)
class AdmitStep:
    """Everything one request asks of the key store, done in one round trip and in this order:

    1. ``settle``: keys set unconditionally (``SET EX``), e.g. event ids of earlier requests now durable;
    2. ``once_key``: set only if absent (``SET NX EX``); when it was already there the request is a replay
       and nothing is claimed;
    3. ``claim``: each key set only if absent; the answer says which ones this request set first.

    Claimed and settled keys are ``prefix + name``; a name must not contain a newline.
    """

    prefix: str
    claim: list[str]
    claim_value: bytes
    claim_ttl: int
    once_key: str | None = None
    once_ttl: int = 0
    settle: list[str] = field(default_factory=list)
    settle_value: bytes = b"1"
    settle_ttl: int = 1


# One command per batch instead of one per key: redis-py spends far more CPU packing and parsing 50
# pipelined SETs than Redis spends running them, and that was most of the gateway's time per request.
_SET_NX_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'EX', ARGV[2]) then out[i] = 1 else out[i] = 0 end
end
return out
"""
# The whole admission of a request in one script (see AdmitStep). KEYS: the once key, or none. The claimed
# and settled names come as one newline-separated argument each and the answer is one string, '1' or '0'
# per claimed name, or nil for a replay: redis-py spends several microseconds packing each argument and
# parsing each element of a reply, Redis a fraction of that splitting a string. (The keys built here are not
# declared, so this needs a non-clustered Redis, as the other multi-key scripts do.)
_ADMIT_SCRIPT = """
local function names(text, count)
  local out, from = {}, 1
  for i = 1, count do
    local to = string.find(text, '\\n', from, true)
    if to == nil then to = #text + 1 end
    out[i] = string.sub(text, from, to - 1)
    from = to + 1
  end
  return out
end
local prefix = ARGV[1]
local settled = names(ARGV[8], tonumber(ARGV[7]))
for i = 1, #settled do
  redis.call('SET', prefix .. settled[i], ARGV[9], 'EX', ARGV[10])
end
if #KEYS == 1 and not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  return false
end
local claimed = names(ARGV[4], tonumber(ARGV[3]))
local out = {}
for i = 1, #claimed do
  if redis.call('SET', prefix .. claimed[i], ARGV[5], 'NX', 'EX', ARGV[6]) then out[i] = '1' else out[i] = '0' end
end
return table.concat(out)
"""
_SET_SCRIPT = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1], 'EX', ARGV[2])
end
return #KEYS
"""


def _joined(names: list[str]) -> str:
    text = "\n".join(names)
    if names and text.count("\n") != len(names) - 1:
        raise ValueError("a key name given to the admission script contains a newline")
    return text


class RedisKV:
    """The same operations on Redis, one round trip and one command per call (a server-side script).

    The multi-key scripts need all keys on one node: with Redis Cluster, point the gateway at a
    non-clustered Redis (the keys are short-lived) or give the keys a hash tag.

    :param client: a ``redis.asyncio.Redis``
    :param fast: a :class:`~ingest_gateway.resp.RespPool` on the same server for the per-request admission
        (the hot path); without it that call goes through redis-py as well
    """

    def __init__(self, client, fast: RespPool | None = None) -> None:
        self._redis = client
        self._fast = fast
        self._admit_script = Script(_ADMIT_SCRIPT)
        self._set_nx = client.register_script(_SET_NX_SCRIPT)
        self._set = client.register_script(_SET_SCRIPT)
        self._admit = client.register_script(_ADMIT_SCRIPT)

    @classmethod
    def from_url(cls, url: str) -> "RedisKV":
        import redis.asyncio as redis

        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=30)
        return cls(client, RespPool(url, timeout=2.0) if RespPool.supports(url) else None)

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

    async def admit(self, step: AdmitStep) -> list[bool] | None:
        """See :class:`AdmitStep`. :returns: None for a replay, else one flag per claimed key."""
        claim, settle = _joined(step.claim), _joined(step.settle)
        keys = [step.once_key] if step.once_key is not None else []
        args = [step.prefix, step.once_ttl, len(step.claim), claim, step.claim_value, step.claim_ttl,
                len(step.settle), settle, step.settle_value, step.settle_ttl]
        if self._fast is not None:
            answer = await self._fast.run_script(self._admit_script, keys, args)
        else:
            answer = await self._admit(keys=keys, args=args)
        if answer is None:
            return None
        return [flag == 49 for flag in answer]  # b"1"

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        if self._fast is not None:
            await self._fast.close()
        await self._redis.aclose()
