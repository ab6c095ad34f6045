"""The gateway's key store on the real Redis: one admission per request (replay check, event-id claims and
earlier confirmations in one script), answered exactly as the in-process store answers."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from ingest_gateway.dedup import EventDedup, Replayed
from ingest_gateway.kv import AdmitStep, MemoryKV, RedisKV

pytestmark = pytest.mark.integration
REDIS_URL = "redis://127.0.0.1:6379/0"


def _run(coro):
    return asyncio.run(coro)


async def _scenario(kv) -> list:
    """The same sequence of admissions; returns every answer and what the keys hold afterwards."""
    p = f"it:kv:{uuid.uuid4().hex}:"
    answers = [
        await kv.admit(AdmitStep(prefix=p, claim=["a", "b", "a", ""], claim_value=b"pending", claim_ttl=60,
                                 once_key=p + "sig-1", once_ttl=60)),
        # the same once key again: a replay, and nothing of it is claimed
        await kv.admit(AdmitStep(prefix=p, claim=["c"], claim_value=b"pending", claim_ttl=60,
                                 once_key=p + "sig-1", once_ttl=60)),
        # settling comes first, then the claims; no once key at all
        await kv.admit(AdmitStep(prefix=p, claim=["b", "d"], claim_value=b"pending", claim_ttl=60,
                                 settle=["a", "x"], settle_value=b"1", settle_ttl=600)),
        await kv.admit(AdmitStep(prefix=p, claim=[], claim_value=b"pending", claim_ttl=60, once_key=p + "sig-2",
                                 once_ttl=60)),
    ]
    held = [await kv.get(p + name) for name in ("a", "b", "c", "d", "x", "")]
    await kv.close()
    return answers + held


def test_redis_admission_answers_like_the_in_process_store():
    on_redis = _run(_scenario(RedisKV.from_url(REDIS_URL)))
    in_process = _run(_scenario(MemoryKV()))
    assert on_redis == in_process == [
        [True, True, False, True], None, [False, True], [],
        b"1", b"pending", None, b"pending", b"1", b"pending",
    ]


def test_redis_admission_refuses_a_name_with_a_newline():
    async def scenario():
        kv = RedisKV.from_url(REDIS_URL)
        try:
            with pytest.raises(ValueError, match="newline"):
                await kv.admit(AdmitStep(prefix="it:kv:", claim=["a\nb"], claim_value=b"p", claim_ttl=5))
        finally:
            await kv.close()

    _run(scenario())


def test_confirmations_ride_along_with_the_next_admission_and_are_flushed_when_idle():
    async def scenario():
        import redis.asyncio as redis

        kv = RedisKV.from_url(REDIS_URL)
        probe = redis.Redis.from_url(REDIS_URL)
        dedup = EventDedup(kv, window_seconds=3600, pending_ttl=60, settle_delay=0.05)
        first, second, idle = ([str(uuid.uuid4()) for _ in range(3)] for _ in range(3))
        try:
            assert await dedup.admit(first) == [True] * 3
            await dedup.confirm(first)
            # Not yet written: the claim still says pending (and still answers "duplicate").
            assert await probe.get("hw:ev:" + first[0]) == b"pending"
            assert await dedup.admit(first[:1] + second) == [False, True, True, True]
            for event_id in first:  # written by that admission, for the whole window
                assert await probe.get("hw:ev:" + event_id) == b"1"
                assert await probe.ttl("hw:ev:" + event_id) > 3000
            await dedup.confirm(second)
            await asyncio.sleep(0.3)  # no admission comes: the timer writes them
            assert [await probe.get("hw:ev:" + e) for e in second] == [b"1"] * 3
            with pytest.raises(Replayed):
                sig = f"it:sig:{uuid.uuid4().hex}"
                assert await dedup.admit(idle, sig, 60) == [True] * 3
                await dedup.admit([str(uuid.uuid4())], sig, 60)
            await dedup.confirm(idle)
            await dedup.close()  # shutting down writes what is left at once
            assert [await probe.get("hw:ev:" + e) for e in idle] == [b"1"] * 3
        finally:
            await kv.close()
            await probe.aclose()

    _run(scenario())


# --- the minimal client behind the per-request admission -------------------------------------------
def test_resp_client_loads_an_unknown_script_and_maps_errors_like_redis_py():
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    from ingest_gateway.resp import RespPool, Script

    async def scenario():
        pool = RespPool(REDIS_URL)
        script = Script(f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}}")
        first = await pool.run_script(script, ["k"], [b"v", 41])  # NOSCRIPT, then EVAL
        again = await pool.run_script(script, ["k"], ["v", 1])  # now known by its SHA
        with pytest.raises(ResponseError):
            await pool.execute(b"NOSUCHCOMMAND")
        assert await pool.execute(b"PING") == b"PONG"  # the connection survives an error reply
        await pool.close()
        unreachable = RespPool("redis://127.0.0.1:1/0", timeout=1.0)
        with pytest.raises(RedisConnectionError):
            await unreachable.execute(b"PING")
        return first, again

    assert _run(scenario()) == ([b"k", b"v", 42], [b"k", b"v", 2])


def test_resp_client_replaces_a_connection_the_server_closed():
    import redis

    from ingest_gateway.resp import RespPool

    async def scenario():
        pool = RespPool(REDIS_URL)
        client_id = await pool.execute(b"CLIENT", b"ID")
        redis.Redis.from_url(REDIS_URL).client_kill_filter(_id=client_id)
        assert await pool.execute(b"PING") == b"PONG"  # the idle one was dead: a new one answers
        assert await pool.execute(b"CLIENT", b"ID") != client_id
        await pool.close()

    _run(scenario())


def test_redis_kv_admits_through_the_minimal_client_and_redis_py_alike():
    fast, plain = RedisKV.from_url(REDIS_URL), RedisKV.from_url(REDIS_URL)
    plain._fast = None
    assert fast._fast is not None
    assert _run(_scenario(fast)) == _run(_scenario(plain))
