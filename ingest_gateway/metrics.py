"""The gateway's Prometheus metrics, on a registry of their own per app instance.

A registry per app keeps several apps in one process (tests, embedded demo) apart. Under uvicorn with
several workers each worker serves its own counters; scrape each pod (one worker per pod in Kubernetes) or
run with ``PROMETHEUS_MULTIPROC_DIR`` set.
"""
from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

RESULTS = ("accepted", "rejected", "duplicate", "no_consent", "dark")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

__all__ = ["GatewayMetrics", "CONTENT_TYPE_LATEST"]


class GatewayMetrics:
    """:param spool_bytes: reads the spool's undelivered bytes at scrape time"""

    def __init__(self, spool_bytes: Callable[[], float] = lambda: 0.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter("analytics_ingest_events", "Events by what the gateway did with them.",
                              ["result"], registry=r)
        self.by_result = {name: self.events.labels(name) for name in RESULTS}
        self.requests = Counter("analytics_ingest_requests", "HTTP requests by route and status.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("analytics_ingest_request_seconds", "Request handling time by route.",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.schema_failures = Counter("analytics_schema_failures", "Events failing schema validation, by event name.",
                                       ["event"], registry=r)
        self.spooled = Counter("analytics_gateway_spooled_batches", "Batches written to the disk spool.", registry=r)
        self.backpressure = Counter("analytics_gateway_backpressure", "Requests refused for load (429) or a full spool (503).",
                                    ["reason"], registry=r)
        self.dependency_errors = Counter("analytics_gateway_dependency_errors", "Failed calls to Redis or the SQL store.",
                                         ["dependency"], registry=r)
        self.spool_bytes = Gauge("analytics_gateway_spool_bytes", "Bytes waiting in the disk spool.", registry=r)
        self.spool_bytes.set_function(spool_bytes)
        self.inflight = Gauge("analytics_gateway_inflight_requests", "Collect requests being processed.", registry=r)
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def request_done(self, route: str, status: int, seconds: float) -> None:
        """One finished request: its latency and its status count. The labelled children are looked up
        once per (route, status) and kept, since ``labels()`` takes a lock and builds a key on every call."""
        children = self._request_children.get((route, status))
        if children is None:
            children = (self.latency.labels(route), self.requests.labels(route, str(status)))
            self._request_children[(route, status)] = children
        children[0].observe(seconds)
        children[1].inc()

    def count(self, result: str, amount: int) -> None:
        if amount:
            self.by_result[result].inc(amount)

    def render(self) -> bytes:
        return generate_latest(self.registry)
