"""Kafka going away under load: batches go to the disk spool (still 2xx), then drain in order when Kafka is
back, across a gateway restart too. Proven by reading the topic: every accepted event exactly once.

The broker is a private Tansu behind a TCP proxy: cutting the proxy is a network partition, so the broker
keeps what it had (Tansu is memory-only: stopping it would lose the data the test must count).
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from starlette.testclient import TestClient

from ingest_gateway.app import create_app
from ingest_gateway.options import GatewayOptions
from tests.integration.gateway_support import (gateway_settings, make_event, metric, post_batch, private_broker,
                                               read_topic, records_for)

pytestmark = pytest.mark.integration


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_outage_spools_then_drains_with_no_loss_and_no_duplicates(stack_settings, tmp_path):
    with private_broker(tmp_path / "tansu.log") as (bootstrap, proxy):
        settings = gateway_settings(stack_settings, tmp_path, kafka_brokers=bootstrap, kafka_options={
            "reconnect.backoff.ms": "50", "reconnect.backoff.max.ms": "300", "topic.metadata.refresh.interval.ms": "1000"})
        options = GatewayOptions.from_settings(settings, delivery_timeout_ms=1500, spool_dir=tmp_path / "spool")

        accepted: list[str] = []
        statuses: Counter = Counter()
        lock = threading.Lock()

        def send(client, batches: int) -> None:
            for _ in range(batches):
                events = [make_event() for _ in range(20)]
                r = post_batch(client, events)
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        assert r.json()["accepted"] == 20
                        accepted.extend(e["event_id"] for e in events)

        first = TestClient(create_app(settings, options=options))
        with first:
            gw = first.app.state.gateway
            send(first, 10)  # live
            assert len(gw.publisher.spool) == 0

            # Kafka vanishes between two requests of a running load.
            load = threading.Thread(target=send, args=(first, 25))
            proxy.cut()
            load.start()
            load.join(60)
            assert not load.is_alive()
            assert statuses == {200: 35}  # still 2xx: the spool took them
            assert gw.publisher.spool.pending_bytes > 0
            text = first.get("/metrics").text
            assert metric(text, "analytics_gateway_spool_bytes") > 0
            assert metric(text, "analytics_gateway_spooled_batches_total") == 25
            assert first.get("/readyz").status_code == 503

            proxy.restore()
            wait_for(lambda: len(gw.publisher.spool) == 0 and not gw.publisher.degraded, 30, "the spool to drain")
            assert metric(first.get("/metrics").text, "analytics_gateway_spool_bytes") == 0
            send(first, 5)  # direct again
            assert len(gw.publisher.spool) == 0

            # A second outage, and this time the gateway stops with a backlog in its spool.
            proxy.cut()
            send(first, 8)
            backlog = len(gw.publisher.spool)
            assert backlog == 8
        assert statuses == {200: 48}

        proxy.restore()
        second = TestClient(create_app(settings, options=options))
        with second:
            gw2 = second.app.state.gateway
            assert gw2.publisher.spool.directory == tmp_path / "spool" / "slot-0"
            wait_for(lambda: len(gw2.publisher.spool) == 0, 30, "the restarted gateway to drain the spool")
            send(second, 2)

        records = records_for(read_topic(bootstrap, "analytics.events.raw"), set(accepted))
        counts = Counter(r.headers["hw-event-id"].decode() for r in records)
        assert len(accepted) == 50 * 20
        missing = set(accepted) - set(counts)
        duplicated = {k: v for k, v in counts.items() if v > 1}
        assert not missing, f"{len(missing)} accepted event(s) lost"
        assert not duplicated, f"{len(duplicated)} event(s) published more than once"
