"""The Python SDK (``headwater_client``) against a real gateway process, Redis, PostgreSQL and the devstack
broker: what it sends is accepted and lands on the raw topic once, whatever happens on the way."""
from __future__ import annotations

import base64
import http.client
import os
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from headwater_client import AnalyticsClient, AnalyticsEmitter
from tests.integration.gateway_support import KID, MASTER_KEY, free_port, gateway_process, read_topic, records_for

pytestmark = pytest.mark.integration
RAW = "analytics.events.raw"
READ_TIMEOUT = 120.0  # the shared broker's raw topic grows with every test run
PAGE = {"path": "/pricing", "url": "https://example.com/pricing"}


@pytest.fixture(scope="module")
def gateway_env(devstack, tmp_path_factory):
    return {**os.environ, **devstack.env(), "HEADWATER_DATA_DIR": str(tmp_path_factory.mktemp("gateway")),
            "HEADWATER_HMAC_KEYS": f"{KID}:{base64.b64encode(MASTER_KEY).decode()}"}


@pytest.fixture(scope="module")
def gateway_url(gateway_env):
    with gateway_process(gateway_env) as base:
        yield base


def client_for(url: str, path, **options) -> AnalyticsClient:
    settings = {"device_id": f"sdk-{uuid.uuid4().hex[:10]}", "kid": KID, "master_key": MASTER_KEY,
                "queue_path": path, "flush_interval": 0, "backoff_base": 0.05, "backoff_max": 0.5, **options}
    return AnalyticsClient(url, **settings)


def topic_counts(stack_settings, ids: set[str]) -> Counter:
    records = records_for(read_topic(stack_settings.kafka_brokers, RAW, timeout=READ_TIMEOUT), ids)
    return Counter(r.headers["hw-event-id"].decode() for r in records)


class Relay:
    """An HTTP relay in front of the gateway on a fixed port: it can be stopped (the gateway is unreachable:
    connections are refused), pointed at a new gateway, and made to drop the gateway's answer to the next
    N requests after forwarding them (the request took effect; the client never hears back)."""

    def __init__(self, port: int) -> None:
        self.port, self.upstream = port, None
        self.drop_answers = 0
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self._server: ThreadingHTTPServer | None = None

    def start(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPConnection(relay.upstream, timeout=30)
                conn.request("POST", self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                conn.close()
                relay.answers.append((answer.status, {k.lower(): v for k, v in answer.getheaders()}, data))
                if relay.drop_answers > 0:
                    relay.drop_answers -= 1
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "connection", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def test_tracked_events_land_on_the_raw_topic(gateway_url, stack_settings, tmp_path):
    client = client_for(gateway_url, tmp_path / "q.sqlite3", app_version="4.2.0", locale="en-US")
    try:
        anon_ids = [client.track("page_viewed", PAGE) for _ in range(3)]
        client.identify("sdk-user-1", {"plan_id": "team", "email": "someone@example.com"})
        user_ids = [client.track("page_viewed", PAGE), client.screen("CommunityFeed")]
        result = client.flush()
    finally:
        client.close()
    assert result.accepted == 6 and result.rejected == [] and result.failed == 0 and result.pending == 0
    ids = set(anon_ids + user_ids)
    records = records_for(read_topic(stack_settings.kafka_brokers, RAW, timeout=READ_TIMEOUT), ids)
    by_id = {r.headers["hw-event-id"].decode(): r for r in records}
    assert set(by_id) == ids and len(records) == len(ids)
    for event_id in anon_ids:
        assert by_id[event_id].key == client.anonymous_id.encode()
        assert by_id[event_id].headers["hw-event"] == b"page_viewed"
        assert by_id[event_id].headers["hw-schema-version"] == b"1"
    assert by_id[user_ids[0]].key == b"sdk-user-1"
    assert by_id[user_ids[1]].headers["hw-event"] == b"screen_viewed"


def test_an_invalid_event_is_rejected_per_event(gateway_url, stack_settings, tmp_path):
    client = client_for(gateway_url, tmp_path / "q.sqlite3")
    try:
        good = client.track("page_viewed", PAGE)
        bad = client.track("page_viewed", {"url": "https://example.com/x"})  # no path
        unknown_field = client.track("screen_viewed", {"screen_name": "Feed", "colour": "red"})
        also_good = client.track("screen_viewed", {"screen_name": "Feed"})
        result = client.flush()
        failures = client.failures()
    finally:
        client.close()
    assert result.accepted == 2 and result.failed == 0 and result.pending == 0
    assert [(r["index"], r["event_id"]) for r in result.rejected] == [(1, bad), (2, unknown_field)]
    assert any(e.startswith("properties.path") for e in result.rejected[0]["errors"])
    assert any("colour" in e for e in result.rejected[1]["errors"])
    assert [(f["event_id"], f["reason"]) for f in failures] == [(bad, "rejected"), (unknown_field, "rejected")]
    counts = topic_counts(stack_settings, {good, bad, unknown_field, also_good})
    assert counts == Counter({good: 1, also_good: 1})


def test_gateway_down_then_up_delivers_each_event_once(gateway_env, stack_settings, tmp_path):
    relay = Relay(free_port())
    url = f"http://127.0.0.1:{relay.port}"
    queue = tmp_path / "q.sqlite3"
    with gateway_process(gateway_env) as first_gateway:
        relay.start(first_gateway)
        client = client_for(url, queue, flush_interval=0.2)
        before = [client.track("page_viewed", PAGE) for _ in range(30)]
        assert client.flush(timeout=30).accepted == 30
        relay.stop()
    # The gateway is gone: events keep being queued; the background thread and flush find nobody.
    during = [client.track("page_viewed", PAGE) for _ in range(70)]
    time.sleep(0.6)
    result = client.flush(timeout=5)
    assert result.pending == 70 and result.failed == 0 and result.accepted == 0
    assert client.stats["offline"] >= 1
    client.close(timeout=1)  # the app stops too; its queue file stays
    with gateway_process(gateway_env) as second_gateway:
        relay.start(second_gateway)
        try:
            restarted = client_for(url, queue, device_id=client.device_id)
            assert restarted.stats["pending"] == 70
            result = restarted.flush(timeout=30)
            restarted.close()
        finally:
            relay.stop()
    assert result.accepted == 70 and result.duplicates == 0 and result.pending == 0
    ids = set(before + during)
    counts = topic_counts(stack_settings, ids)
    assert set(counts) == ids, f"{len(ids - set(counts))} event(s) lost"
    assert set(counts.values()) == {1}, "an event was published more than once"


def test_a_retry_after_a_lost_answer_is_answered_idempotently(gateway_url, stack_settings, tmp_path):
    relay = Relay(free_port())
    relay.start(gateway_url)
    relay.drop_answers = 1
    client = client_for(f"http://127.0.0.1:{relay.port}", tmp_path / "q.sqlite3")
    try:
        ids = [client.track("page_viewed", PAGE) for _ in range(5)]
        result = client.flush(timeout=30)
    finally:
        client.close()
        relay.stop()
    assert result.accepted == 5 and result.pending == 0 and client.stats["retries"] == 1
    (first_status, first_headers, first_body), (status, headers, body) = relay.answers
    assert first_status == status == 200 and body == first_body
    assert "idempotent-replayed" not in first_headers and headers["idempotent-replayed"] == "true"
    assert topic_counts(stack_settings, set(ids)) == Counter({i: 1 for i in ids})


def test_emitter_events_are_accepted(gateway_url, stack_settings, tmp_path):
    emitter = AnalyticsEmitter(gateway_url, service="billing", kid=KID, master_key=MASTER_KEY,
                               queue_path=tmp_path / "emitter.sqlite3", flush_interval=0)
    try:
        ids = [
            emitter.subscription_started(user_id="sdk-cust-1", subscription_id="sub_1", plan_id="team_monthly_v3",
                                         billing_interval="month", amount_minor=4900, currency="EUR", seats=3),
            emitter.payment_failed(user_id="sdk-cust-1", payment_id="pay_1", amount_minor=4900, currency="EUR",
                                   failure_code="insufficient_funds", attempt_number=1),
            emitter.subscription_cancelled(user_id="sdk-cust-1", subscription_id="sub_1", plan_id="team_monthly_v3",
                                           reason="payment_failed", cancel_at_period_end=False,
                                           initiated_by="dunning"),
            emitter.automation_run(automation_id="dunning", run_id=str(uuid.uuid4()), trigger="schedule",
                                   status="succeeded", duration_ms=35, actions=["send_email"]),
            emitter.moderation_action(community_id="c-1", action="mute", target_type="user",
                                      target_id="sdk-cust-2", automated=True, rule_id="spam-1",
                                      duration_seconds=3600),
            emitter.message_sent(user_id="sdk-cust-2", message_id="m-1", conversation_id="conv-1",
                                 channel_type="channel", message_type="text", length_chars=12),
            emitter.community_join(user_id="sdk-cust-3", community_id="c-1", join_source="search"),
        ]
        result = emitter.flush(timeout=30)
    finally:
        emitter.close()
    assert result.accepted == 7 and result.rejected == [] and result.pending == 0
    records = records_for(read_topic(stack_settings.kafka_brokers, RAW, timeout=READ_TIMEOUT), set(ids))
    by_id = {r.headers["hw-event-id"].decode(): r for r in records}
    assert set(by_id) == set(ids) and len(records) == 7
    assert by_id[ids[0]].key == b"sdk-cust-1" and by_id[ids[0]].headers["hw-event"] == b"subscription_started"
    assert by_id[ids[3]].key == b"svc:billing"
