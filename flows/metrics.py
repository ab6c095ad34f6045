"""Prometheus metrics of the flow (default registry; Bytewax serves it at :3030/metrics when
``BYTEWAX_DATAFLOW_API_ENABLED`` is set).

``analytics_pipeline_lag_seconds`` lives here rather than in ``sinks/``: sinks import nothing but their base and the
settings, so the flow sets it for them, after each batch a sink has written (see :mod:`flows.outputs`).
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge

FLOW_EVENTS = Counter(
    "analytics_flow_events",
    "Events through each flow stage, by result: source (in, kafka_error); decode, validate, time, pii "
    "(invalid); admit (ok: passed all four, counted per batch); enrich (out, failed); dead_letter (out); "
    "sink (written).",
    ["stage", "result"],
)

PIPELINE_LAG = Gauge(
    "analytics_pipeline_lag_seconds",
    "Now minus the gateway receive time of the newest event a sink has committed, per sink.",
    ["sink"],
)


class StageCounters:
    """Pre-bound counter children: one ``labels()`` look-up per process, not per event."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str], object] = {}

    def inc(self, stage: str, result: str, amount: int = 1) -> None:
        child = self._children.get((stage, result))
        if child is None:
            child = self._children[(stage, result)] = FLOW_EVENTS.labels(stage=stage, result=result)
        child.inc(amount)  # type: ignore[attr-defined]


STAGES = StageCounters()

SINK_PENDING = Gauge(
    "analytics_sink_pending_rows",
    "Rows a sink has accepted from the flow but not yet written (held while it fails), per sink.",
    ["sink"],
)
