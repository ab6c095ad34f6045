"""What the ops tests share: the metric names the code defines, and the metric names a PromQL expression uses.

The defined names come from the code itself, not from a list kept by hand: the gateway's registry (one per app,
so an instance is built) and prometheus_client's default REGISTRY after importing the flow, enricher, sink and
Bytewax Kafka modules. A family is expanded into the series names Prometheus stores for its type.
"""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

#: Pushed by the canary (``headwater smoke``) to a Pushgateway; documented in ops/README.md. Not in the code yet.
CANARY_METRICS = frozenset({"headwater_canary_success", "headwater_canary_latency_seconds"})
#: Series that Prometheus (``up``) and the Pushgateway (``push_time_seconds``) add themselves.
GENERATED_METRICS = frozenset({"up", "push_time_seconds"})

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def defined_metric_names() -> frozenset[str]:
    """Every series name the gateway and the flow processes can export."""
    import bytewax.connectors.kafka  # noqa: F401  (registers bytewax_kafka_consumer_lag)
    import enrichers.metrics  # noqa: F401
    import flows.metrics  # noqa: F401
    import sinks.base  # noqa: F401
    from ingest_gateway.metrics import GatewayMetrics
    from prometheus_client import REGISTRY

    names: set[str] = set()
    for registry in (GatewayMetrics().registry, REGISTRY):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
            names.update(sample.name for sample in family.samples)
    return frozenset(names)


_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                       "bool", "offset", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords, label names, numbers and Grafana
    variables left out). ``label_values(selector, label)`` counts only its selector."""
    label_values = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", expr, re.S)
    if label_values:
        expr = label_values.group(1)
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group(0)
        if word.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names
