"""Batching, signing, retries and the per-event answer, against a scripted local HTTP server."""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from headwater_client import AnalyticsClient, FlushResult
from ingest_gateway.kv import MemoryKV
from ingest_gateway.signing import SignatureVerifier
from tests.unit.headwater_client.conftest import KID, MASTER_KEY, closed_port_url

PAGE = {"path": "/pricing", "url": "https://example.com/pricing"}


def test_batches_hold_at_most_fifty_events_in_order(gateway, make_client):
    client = make_client(gateway.url)
    ids = [client.track("page_viewed", PAGE) for _ in range(120)]
    result = client.flush()
    assert result == FlushResult(accepted=120, pending=0)
    assert [len(r.doc["batch"]) for r in gateway.received] == [50, 50, 20]
    assert [e["event_id"] for e in gateway.events()] == ids
    assert client.stats["sent_batches"] == 3 and client.stats["pending"] == 0


def test_smaller_batch_size_and_its_bound(gateway, make_client, tmp_path):
    client = make_client(gateway.url, batch_size=7)
    for _ in range(15):
        client.track("page_viewed", PAGE)
    client.flush()
    assert [len(r.doc["batch"]) for r in gateway.received] == [7, 7, 1]
    with pytest.raises(ValueError, match="batch_size"):
        make_client(gateway.url, batch_size=51, queue_path=tmp_path / "other.sqlite3")


def test_signature_is_what_the_gateway_verifies(gateway, make_client):
    client = make_client(gateway.url, gzip=True)
    client.track("page_viewed", PAGE)  # a small body: sent as is
    client.flush()
    for _ in range(30):
        client.track("page_viewed", {**PAGE, "title": "x" * 100})  # a large one: gzipped
    client.flush()
    first, second = gateway.received
    assert "content-encoding" not in first.headers
    assert second.headers["content-encoding"] == "gzip" and second.raw[:2] == b"\x1f\x8b"
    verifier = SignatureVerifier({KID: MASTER_KEY}, 300, MemoryKV())
    for request in gateway.received:
        device, _ = verifier.verify(request.headers, request.raw)  # over the bytes as sent
        assert device == "dev-unit"
        assert request.doc["consent"] == {"analytics": True}
        assert all(e["device_id"] == "dev-unit" and e["consent"] == {"analytics": True}
                   for e in request.doc["batch"])
    # The same client holding only the derived secret signs identically.
    from ingest_gateway.signing import device_secret
    other = make_client(gateway.url, master_key=None, device_secret=device_secret(MASTER_KEY, "dev-unit"),
                        queue_path=client._queue.path.with_name("secret.sqlite3"))
    other.track("page_viewed", PAGE)
    other.flush()
    verifier.verify(gateway.received[-1].headers, gateway.received[-1].raw)


def test_event_shape_and_context(gateway, make_client):
    client = make_client(gateway.url, app_version="4.2.0", locale="en-US", experiments={"checkout": "b"},
                         anonymous_id="anon-7")
    event_id = str(uuid.uuid4())
    assert client.track("page_viewed", PAGE, event_id=event_id, timestamp="2026-12-03T12:00:00Z",
                        context={"experiments": {"nav": "a"}, "timezone": "Europe/Berlin"}) == event_id
    client.identify("user-9", {"plan_id": "team"})
    client.screen("CommunityFeed")
    client.flush()
    page, identify, screen = gateway.events()
    assert page["event_id"] == event_id and page["timestamp"] == "2026-12-03T12:00:00Z"
    assert page["anonymous_id"] == "anon-7" and "user_id" not in page
    assert page["context"] == {"library": {"name": "headwater-python", "version": "0.1.0"},
                               "app": {"version": "4.2.0"}, "locale": "en-US", "timezone": "Europe/Berlin",
                               "experiments": {"checkout": "b", "nav": "a"}}
    assert identify["event"] == "identify" and identify["user_id"] == "user-9"
    assert identify["properties"] == {"plan_id": "team"}
    assert screen["user_id"] == "user-9" and screen["properties"] == {"screen_name": "CommunityFeed"}
    assert screen["timestamp"].endswith("Z")


def test_bad_calls_fail_early(gateway, make_client):
    client = make_client(gateway.url)
    with pytest.raises(ValueError):
        client.track("Page Viewed", PAGE)
    with pytest.raises(TypeError):
        client.track("page_viewed", ["not", "a", "dict"])
    with pytest.raises(TypeError):
        client.track("page_viewed", {"when": object()})
    with pytest.raises(ValueError):
        client.track("page_viewed", PAGE, event_id="not-a-uuid")
    with pytest.raises(ValueError):
        client.page("pricing", {"url": "https://example.com/pricing"})
    assert client.stats["pending"] == 0


def test_idempotency_key_stays_the_same_across_retries(gateway, make_client):
    # A connection dropped after the request was read (fresh connection: a counted attempt), a 503, then a
    # drop on the kept-alive connection (resent at once on a new one, as for a stale keep-alive socket).
    gateway.script = ["drop", (503, {"error": {"code": "unavailable", "message": "spool full"}}, {"Retry-After": "0"}),
                      "drop"]
    client = make_client(gateway.url)
    client.track("page_viewed", PAGE)
    result = client.flush()
    assert result.accepted == 1 and result.pending == 0
    assert len(gateway.received) == 4
    keys = {r.headers["idempotency-key"] for r in gateway.received}
    assert len(keys) == 1
    assert len({r.raw for r in gateway.received}) == 1  # the same body, byte for byte
    stamps = [int(r.headers["x-headwater-timestamp"]) for r in gateway.received]
    assert stamps[0] < stamps[1] < stamps[2] == stamps[3]  # each counted attempt signed anew, later
    assert client.stats["retries"] == 2
    # The next batch gets a key of its own.
    client.track("page_viewed", PAGE)
    client.flush()
    assert gateway.received[-1].headers["idempotency-key"] not in keys


def test_retry_after_is_honoured(gateway, make_client):
    gateway.script = [(429, {"error": {"code": "overloaded", "message": "busy"}}, {"Retry-After": "1"})]
    client = make_client(gateway.url)
    client.track("page_viewed", PAGE)
    started = time.monotonic()
    assert client.flush().accepted == 1
    assert time.monotonic() - started >= 0.95


def test_exhausted_retries_go_to_the_failure_log(gateway, make_client, tmp_path):
    answer = (500, {"error": {"code": "internal", "message": "boom"}})
    gateway.script = [answer] * 3
    client = make_client(gateway.url, max_attempts=3)
    ids = [client.track("page_viewed", PAGE) for _ in range(2)]
    result = client.flush()
    assert result.failed == 2 and result.accepted == 0 and result.pending == 0
    assert len(gateway.received) == 3
    out = tmp_path / "failures.jsonl"
    assert client.export_failures(out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["event_id"] for r in rows] == ids
    assert rows[0]["reason"] == "retries_exhausted" and rows[0]["errors"] == ["500 internal: boom"]
    assert rows[0]["event"]["properties"] == PAGE
    assert client.stats["failed"] == 2


def test_a_refused_request_is_not_retried(gateway, make_client):
    gateway.script = [(401, {"error": {"code": "unknown_kid", "message": "signing key id 'k1' is not known"}})]
    client = make_client(gateway.url)
    client.track("page_viewed", PAGE)
    result = client.flush()
    assert result.failed == 1 and len(gateway.received) == 1
    (row,) = client.failures()
    assert row["reason"] == "refused" and row["errors"][0].startswith("401 unknown_kid:")


def test_malformed_answer_400_goes_to_the_failure_log(gateway, make_client):
    gateway.script = [(400, {"error": {"code": "malformed_json", "message": "body is not JSON"}})]
    client = make_client(gateway.url)
    client.track("page_viewed", PAGE)
    assert client.flush().failed == 1
    assert client.failures()[0]["errors"] == ["400 malformed_json: body is not JSON"]


def test_per_event_rejections_are_reported_and_logged(gateway, make_client):
    def answer(doc):
        return 200, {"accepted": 1, "duplicates": 1, "no_consent": 0,
                     "rejected": [{"index": 2, "event_id": doc["batch"][2]["event_id"],
                                   "errors": ["properties.path: is required"]}]}, {}
    gateway.script = [answer]
    client = make_client(gateway.url)
    ids = [client.track("page_viewed", PAGE) for _ in range(3)]
    result = client.flush()
    assert result.accepted == 1 and result.duplicates == 1 and result.failed == 0
    assert result.rejected == [{"event_id": ids[2], "index": 2, "errors": ["properties.path: is required"]}]
    (row,) = client.failures()
    assert row["event_id"] == ids[2] and row["reason"] == "rejected"
    assert client.stats["rejected"] == 1 and client.stats["pending"] == 0


def test_gateway_down_keeps_events_queued_without_spending_attempts(gateway, make_client, tmp_path):
    down = closed_port_url()
    client = make_client(down, max_attempts=1)
    ids = [client.track("page_viewed", PAGE) for _ in range(3)]
    for _ in range(3):
        result = client.flush(timeout=2)
        assert result.pending == 3 and result.failed == 0
    assert client.stats["offline"] == 3
    client.close()
    # Restarted against a gateway that is up: the queued events go out, same ids.
    again = make_client(gateway.url, max_attempts=1)
    assert again.flush().accepted == 3
    assert [e["event_id"] for e in gateway.events()] == ids


def test_timeout_counts_as_an_attempt_and_is_retried(gateway, make_client):
    gateway.script = [("stall", 1.5)]
    client = make_client(gateway.url, timeout=0.5)
    client.track("page_viewed", PAGE)
    result = client.flush()
    assert result.accepted == 1
    assert len(gateway.received) == 2
    assert gateway.received[0].headers["idempotency-key"] == gateway.received[1].headers["idempotency-key"]


def test_flush_timeout_leaves_the_rest_pending(gateway, make_client):
    gateway.script = [(503, {"error": {"code": "unavailable", "message": "x"}}, {"Retry-After": "30"})]
    client = make_client(gateway.url)
    client.track("page_viewed", PAGE)
    started = time.monotonic()
    result = client.flush(timeout=1.0)
    assert time.monotonic() - started < 2 and result.pending == 1 and result.accepted == 0
    assert client.flush().accepted == 1  # same batch, same key, next time
    assert len({r.headers["idempotency-key"] for r in gateway.received}) == 1


def test_background_thread_sends_and_flush_reports_it(gateway, make_client):
    client = make_client(gateway.url, flush_interval=0.1)
    for _ in range(60):
        client.track("page_viewed", PAGE)
    deadline = time.monotonic() + 10
    while client.stats["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.stats["pending"] == 0 and client.stats["accepted"] == 60
    assert client.flush().accepted == 60  # reported once, by the next flush
    assert client.flush().accepted == 0


def test_track_from_many_threads(gateway, make_client):
    client = make_client(gateway.url, flush_interval=0.05)
    ids: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [client.track("page_viewed", PAGE) for _ in range(50)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.flush()
    sent = [e["event_id"] for e in gateway.events()]
    assert sorted(sent) == sorted(ids) and len(set(sent)) == 400
    assert all(len(r.doc["batch"]) <= 50 for r in gateway.received)


def test_opt_out_deletes_the_queue_and_sends_nothing(gateway, make_client, tmp_path):
    client = make_client(gateway.url)
    for _ in range(5):
        client.track("page_viewed", PAGE)
    assert client.opt_out() == 5
    assert client.stats["pending"] == 0
    client.track("page_viewed", PAGE)
    assert client.flush() == FlushResult()
    assert gateway.received == [] and client.stats["dropped_no_consent"] == 1
    client.close()
    # The choice survives a restart; opting in again resumes capture.
    again = make_client(gateway.url)
    assert again.consent is False
    again.track("page_viewed", PAGE)
    assert again.stats["pending"] == 0
    again.opt_in()
    again.track("page_viewed", PAGE)
    assert again.flush().accepted == 1


def test_consent_false_captures_nothing(gateway, make_client):
    client = make_client(gateway.url, consent=False)
    event_id = client.track("page_viewed", PAGE)
    assert uuid.UUID(event_id) and client.stats["pending"] == 0 and client.flush().accepted == 0
    assert gateway.received == []


def test_anonymous_and_user_id_persist(gateway, make_client):
    first = make_client(gateway.url)
    anon = first.anonymous_id
    first.identify("user-1")
    first.close()
    second = make_client(gateway.url)
    assert second.anonymous_id == anon and second.user_id == "user-1"
    second.reset()
    assert second.user_id is None and second.anonymous_id != anon


def test_context_manager_closes(gateway, tmp_path):
    with AnalyticsClient(gateway.url, device_id="dev-cm", kid=KID, master_key=MASTER_KEY,
                         queue_path=tmp_path / "cm.sqlite3", flush_interval=0.5) as client:
        client.track("page_viewed", PAGE)
    assert len(gateway.events()) == 1
    with pytest.raises(RuntimeError):
        client.track("page_viewed", PAGE)


def test_a_gateway_with_a_smaller_batch_limit_gets_smaller_batches(gateway, make_client):
    def limit_20(doc):
        if len(doc["batch"]) > 20:
            return 413, {"error": {"code": "too_many_events", "message": "the limit is 20"}}, {}
        return 200, {"accepted": len(doc["batch"]), "duplicates": 0, "no_consent": 0, "rejected": []}, {}

    gateway.script = [limit_20] * 10
    client = make_client(gateway.url)
    ids = [client.track("page_viewed", PAGE) for _ in range(60)]
    result = client.flush()
    assert result.accepted == 60 and result.failed == 0
    sizes = [len(r.doc["batch"]) for r in gateway.received]
    assert sizes[:3] == [50, 25, 12] and all(size == 12 for size in sizes[3:-1]) and sum(sizes[2:]) == 60
    accepted_batches = [r for r in gateway.received if len(r.doc["batch"]) <= 20]
    assert [e["event_id"] for r in accepted_batches for e in r.doc["batch"]] == ids
    assert client.stats["resized"] >= 1


def test_the_sdk_needs_only_the_standard_library(gateway, tmp_path):
    """In a fresh interpreter without orjson: nothing of the repository is imported and delivery works."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent(f"""
        import sys
        sys.modules["orjson"] = None  # as if it were not installed
        from headwater_client import AnalyticsClient
        c = AnalyticsClient({gateway.url!r}, device_id="dev-std", kid={KID!r}, master_key={MASTER_KEY!r},
                            queue_path={str(tmp_path / "std.sqlite3")!r}, flush_interval=0)
        c.track("page_viewed", {{"path": "/é", "url": "https://example.com/%C3%A9"}})
        assert c.flush().accepted == 1
        c.close()
        leaked = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in (
            "headwater", "ingest_gateway", "schemas", "orjson", "flows", "sinks", "enrichers"))
        assert not leaked, leaked
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert gateway.events()[0]["properties"]["path"] == "/é"
