"""``POST /analytics/collect`` is served in front of Starlette's router: same answers, headers and metrics;
everything else (other methods on the path, other routes) still goes through Starlette."""
from __future__ import annotations

import json

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


CONTEXT = {"locale": "de-DE", "app": {"name": "Acme", "version": "1.2.0"}, "user_agent": 'Agent "7" \\ {x}'}


def test_contexts_are_checked_once_per_text_and_bad_ones_explained(offline_client):
    client = offline_client()
    registry = client.app.state.gateway.registry
    bad_context = {**CONTEXT, "locale": 5}
    events = [make_event(context=CONTEXT), make_event(context=bad_context), make_event(context=CONTEXT),
              make_event(context=CONTEXT, properties={"url": "https://example.com/"}), make_event()]
    r = post(client, json.dumps({"batch": events}, indent=2).encode())  # the client's layout does not matter
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["accepted"] == 3
    errors = {item["index"]: item["errors"] for item in doc["rejected"]}
    assert set(errors) == {1, 3}
    assert any(e.startswith("context.locale:") for e in errors[1])  # explained against the whole event
    assert any(e.startswith("properties.path:") for e in errors[3])
    texts = registry._shared_texts["context"]
    assert sum(1 for verdict in texts.values() if verdict is True) == 1
    assert sum(1 for verdict in texts.values() if verdict is False) == 1


def test_a_context_that_is_not_json_makes_the_body_malformed(offline_client):
    client = offline_client()
    good = orjson.dumps(make_event(context=CONTEXT))
    broken = good.replace(b'"de-DE"', b"tru")  # the rest of the body is fine JSON
    r = post(client, b'{"batch": [' + broken + b"]}")
    assert r.status_code == 400 and error_code(r) == "malformed_json"
