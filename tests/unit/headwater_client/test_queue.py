"""The SQLite queue on its own, and restart behaviour: what was queued or sealed survives the process."""
from __future__ import annotations

import random
import subprocess
import sys
import textwrap

from headwater_client import wire
from headwater_client.queue import EventQueue
from headwater_client.sender import backoff_delay
from tests.unit.headwater_client.conftest import KID, MASTER_KEY

PAGE = {"path": "/a", "url": "https://example.com/a"}


def test_events_survive_reopen_and_keep_their_order(tmp_path):
    path = tmp_path / "q.sqlite3"
    queue = EventQueue(path)
    for i in range(5):
        queue.append(f"id-{i}", wire.dumps({"n": i}))
    queue.close()
    reopened = EventQueue(path)
    assert reopened.pending() == 5
    batch = reopened.seal(3)
    assert batch.event_ids == ["id-0", "id-1", "id-2"]
    doc = wire.loads(batch.body)
    assert [e["n"] for e in doc["batch"]] == [0, 1, 2] and doc["consent"] == {"analytics": True}
    reopened.close()
    # The sealed batch comes back with the same body and key after a restart.
    third = EventQueue(path)
    assert third.sealed() == [batch.batch_id]
    again = third.load(batch.batch_id)
    assert again.body == batch.body and again.idempotency_key == batch.idempotency_key
    assert third.seal(50).event_ids == ["id-3", "id-4"]
    assert third.finish(batch.batch_id, [(1, "rejected", ["bad"])]) == 3
    assert third.pending() == 2
    (failure,) = third.failures()
    assert failure["event_id"] == "id-1" and failure["event"] == {"n": 1} and failure["errors"] == ["bad"]
    assert third.clear() == 2 and third.pending() == 0 and third.failures() == []
    third.close()


def test_attempts_and_signing_time_are_kept(tmp_path):
    queue = EventQueue(tmp_path / "q.sqlite3")
    queue.append("a", b"{}")
    batch = queue.seal(50)
    queue.record_attempt(batch.batch_id, 1_800_000_000, "503 unavailable: x")
    queue.record_attempt(batch.batch_id, 1_800_000_001, None, counts=False)
    loaded = queue.load(batch.batch_id)
    assert loaded.attempts == 1 and loaded.signed_at == 1_800_000_001
    queue.close()


def test_backoff_is_full_jitter_within_its_bounds():
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.25 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 0.25, 30.0, rng) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # spread over the whole range
    assert backoff_delay(40, 0.25, 30.0, rng) <= 30.0


def test_a_killed_process_leaves_its_events_for_the_next_one(gateway, tmp_path):
    """Queue in a child process that dies without closing anything; a new client sends those events."""
    path = tmp_path / "crash.sqlite3"
    child = textwrap.dedent(f"""
        import os
        from headwater_client import AnalyticsClient
        c = AnalyticsClient({gateway.url!r} + "/unreachable-prefix-is-fine", device_id="dev-unit", kid={KID!r},
                            master_key={MASTER_KEY!r}, queue_path={str(path)!r}, flush_interval=0)
        ids = [c.track("page_viewed", {PAGE!r}) for _ in range(7)]
        c._queue.seal(4)  # a batch sealed (as if being sent) when the process died
        print(",".join(ids), flush=True)
        os._exit(9)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == 9, out.stderr
    ids = out.stdout.strip().split(",")
    from headwater_client import AnalyticsClient
    client = AnalyticsClient(gateway.url, device_id="dev-unit", kid=KID, master_key=MASTER_KEY, queue_path=path,
                             flush_interval=0)
    try:
        assert client.stats["pending"] == 7
        assert client.flush().accepted == 7
    finally:
        client.close()
    assert [e["event_id"] for e in gateway.events()] == ids
    assert [len(r.doc["batch"]) for r in gateway.received] == [4, 3]  # the sealed batch first, as sealed


def test_a_batch_stays_under_the_body_size_bound(tmp_path):
    queue = EventQueue(tmp_path / "q.sqlite3")
    for i in range(10):
        queue.append(f"id-{i}", wire.dumps({"blob": "x" * 1000}))
    assert len(queue.seal(50, max_bytes=3500).event_ids) == 3
    queue.append("huge", wire.dumps({"blob": "x" * 10_000}))
    batches = [queue.seal(50, max_bytes=3500) for _ in range(4)]
    # id-9 goes alone because the next event would pass the bound; the larger event still goes, alone.
    assert [b.event_ids for b in batches[2:]] == [["id-9"], ["huge"]]
    assert [len(b.event_ids) for b in batches] == [3, 3, 1, 1]
    queue.close()
