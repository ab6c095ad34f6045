"""``POST /analytics/collect`` is served in front of Starlette's router: same answers, headers and metrics;
everything else (other methods on the path, other routes) still goes through Starlette."""
from __future__ import annotations

import orjson
import pytest

from ingest_gateway import collect as collect_module
from ingest_gateway.collect import is_collect
from tests.unit.ingest_gateway.conftest import make_event
from tests.unit.ingest_gateway.test_app import error_code, post


def test_only_post_on_the_exact_path_takes_the_fast_path():
    base = {"type": "http", "method": "POST", "path": "/analytics/collect", "root_path": ""}
    assert is_collect(base)
    assert not is_collect({**base, "method": "GET"})
    assert not is_collect({**base, "path": "/analytics/collect/"})
    assert not is_collect({**base, "type": "websocket"})
    assert is_collect({**base, "path": "/edge/analytics/collect", "root_path": "/edge"})


def test_other_methods_still_get_the_routers_405(offline_client):
    r = offline_client().get("/analytics/collect")
    assert r.status_code == 405 and "POST" in r.headers["allow"]


def test_answers_carry_the_request_id_and_count_in_the_metrics(offline_client):
    client = offline_client()
    r = post(client, orjson.dumps({"batch": [make_event()]}), extra={"X-Request-ID": "req-abc"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "req-abc"
    assert r.headers["content-type"] == "application/json" and int(r.headers["content-length"]) == len(r.content)
    assert r.json()["accepted"] == 1
    bad = post(client, b"{", extra={"X-Request-ID": "req-bad"})
    assert bad.status_code == 400 and error_code(bad) == "malformed_json" and bad.json()["request_id"] == "req-bad"
    generated = post(client, orjson.dumps({"batch": [make_event()]}))
    assert len(generated.headers["X-Request-ID"]) == 32
    metrics = client.get("/metrics").text
    assert 'analytics_ingest_requests_total{route="/analytics/collect",status="200"} 2.0' in metrics
    assert 'analytics_ingest_requests_total{route="/analytics/collect",status="400"} 1.0' in metrics


def test_an_unexpected_error_is_a_plain_500_and_reaches_the_server(offline_client, monkeypatch):
    client = offline_client()

    async def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(collect_module, "_process", broken)
    with pytest.raises(RuntimeError, match="boom"):
        post(client, orjson.dumps({"batch": [make_event()]}))
    quiet = type(client)(client.app, raise_server_exceptions=False)
    r = post(quiet, orjson.dumps({"batch": [make_event()]}))
    assert r.status_code == 500 and r.text == "Internal Server Error"
    assert 'route="/analytics/collect",status="500"' in client.get("/metrics").text
